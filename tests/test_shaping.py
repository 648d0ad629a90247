"""Potential-based reward shaping: r + gamma Phi(s') - Phi(s), Phi(terminal) = 0 (the learned adversary's director)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.planning_attack import CARTPOLE
from rlab.rl.adversary import margin_potential
from rlab.rl.environments import PotentialShaping, make_envs
from rlab.rl.returns import potential_shaping


def test_shaping_telescopes_to_the_end_potentials_along_an_episode():
    gamma = 0.9
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0])
    phi = torch.tensor([5.0, 3.0, 4.0, 2.0, 7.0])  # Phi(s_0..s_4); s_4 terminal
    terminated = torch.tensor([False, False, False, True])
    shaped = potential_shaping(rewards, phi[:-1], phi[1:], terminated, gamma)
    assert shaped[0].item() == pytest.approx(1 + 0.9 * 3 - 5)
    assert shaped[3].item() == pytest.approx(1 - 2), "a terminal state's potential is 0, not 7"
    discount = gamma ** torch.arange(4.0)
    assert (discount * shaped).sum().item() == pytest.approx((discount * rewards).sum().item() - phi[0].item())
    not_ended = potential_shaping(rewards, phi[:-1], phi[1:], torch.zeros(4, dtype=torch.bool), gamma)
    assert (discount * not_ended).sum().item() == pytest.approx(
        (discount * rewards).sum().item() + gamma ** 4 * 7 - 5), "an unfinished episode keeps gamma^T Phi(s_T)"
    with pytest.raises(ValueError, match="gamma must be in"):
        potential_shaping(rewards, phi[:-1], phi[1:], terminated, 1.5)


def test_the_wrapper_shapes_real_steps_on_the_true_state_and_reports_the_env_reward():
    gamma = 0.99
    potential = margin_potential(CARTPOLE, gamma)
    envs = PotentialShaping(make_envs("CartPole-v1", 2), potential, gamma)
    obs, _ = envs.reset(seed=3)
    ended = np.zeros(2, dtype=bool)
    seen_terminal = seen_reset = False
    for _ in range(60):  # always push right: episodes end in ~10 steps, some resets follow
        before = np.asarray(obs, dtype=np.float32)
        obs, reward, terminated, truncated, info = envs.step(np.ones(2, dtype=np.int64))
        after = np.asarray(obs, dtype=np.float32)
        np.testing.assert_array_equal(info["unshaped_reward"], np.where(ended, 0.0, 1.0))
        expected = 1 + gamma * np.where(terminated, 0.0, potential(after)) - potential(before)
        np.testing.assert_allclose(reward, np.where(ended, 0.0, expected), rtol=1e-5)
        seen_terminal |= bool(terminated.any())
        seen_reset |= bool(ended.any())
        ended = terminated | truncated
    assert seen_terminal and seen_reset
    assert potential(np.zeros((1, 4)))[0] == pytest.approx(1 / (1 - gamma)), "m = 1 at the centre, upright"
    envs.close()


def test_a_shaped_learner_logs_returns_in_the_env_units(tiny_cartpole_agent):
    """The director trains on shaped rewards but its logged episode return is the env's: minus the victim's length."""
    from rlab.rl.adversary import director_learner, director_options

    learner, trained = director_learner(tiny_cartpole_agent, "CartPole-v1", 0.2, director_options(n_envs=4),
                                        seed=0, pgd_steps=2, shaping=True)
    assert trained["shaping"] and isinstance(learner.envs, PotentialShaping)
    learner.start(seed=0)
    returns, lengths = [], []
    while len(returns) < 4:
        it = learner.iterate(1.0)
        returns += it.episode_returns
        lengths += it.episode_lengths
    assert returns == [-float(n) for n in lengths], "CartPole pays 1 a step: the director's return is -length"
    learner.close()
