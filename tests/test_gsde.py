"""gSDE (Raffin et al., 2022): the state-dependent Gaussian's log-prob and entropy, the noise as a function of the
state between draws, the draw schedule, and refusals."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlab.cli import main
from rlab.rl.policies import make_actor_critic

BOX3, ACTIONS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Box(-2.0, 2.0, (2,), np.float32)


def test_gsde_log_prob_and_entropy_are_the_state_dependent_gaussians():
    torch.manual_seed(0)
    agent = make_actor_critic(BOX3, ACTIONS, hidden=(5,), log_std_init=-0.7, sde_sample_freq=4)
    with torch.no_grad():
        agent.log_std.normal_(-0.5, 0.4)  # a different std per (latent unit, action dim)
    obs = torch.randn(6, 3)
    z = agent.actor[:-1](agent.obs_norm(obs))
    sigma = (z.square() @ (2 * agent.log_std).exp() + agent.SDE_EPS).sqrt()  # sum_j z_j^2 exp(2 L_ji)
    assert sigma.shape == (6, 2) and sigma.std() > 0.01  # depends on the state
    dist = agent(obs)
    actions = dist.sample()
    logp, entropy, _ = agent.evaluate_actions(obs, actions)
    normal = torch.distributions.Normal(agent.actor(agent.obs_norm(obs)), sigma)
    assert torch.allclose(logp, normal.log_prob(actions).sum(-1), atol=1e-5)
    assert torch.allclose(entropy, normal.entropy().sum(-1), atol=1e-5)
    logp.sum().backward()
    assert agent.log_std.grad.abs().sum() > 0  # the std is learned through the log-prob


def test_gsde_noise_is_z_times_one_matrix_per_env_drawn_every_k_steps():
    torch.manual_seed(1)
    agent = make_actor_critic(BOX3, ACTIONS, hidden=(8,), sde_sample_freq=3)
    obs = torch.randn(2, 3)
    mu = agent.sample(obs, deterministic=True)[0]
    agent.reset_noise(2)
    noise = [agent.sample(obs)[0] - mu for _ in range(5)]
    assert torch.allclose(noise[0], noise[1]) and torch.allclose(noise[1], noise[2])  # same state, same matrix
    assert not torch.allclose(noise[2], noise[3]) and torch.allclose(noise[3], noise[4])  # drawn again at step 3
    assert not torch.allclose(noise[0][0], noise[0][1])  # one matrix per env
    z = agent.actor[:-1](agent.obs_norm(obs))
    assert torch.allclose(noise[4], torch.einsum("nl,nla->na", z, agent.sde_matrices), atol=1e-6)
    nearby = agent.sample(obs + 1e-3)[0] - agent.sample(obs + 1e-3, deterministic=True)[0]  # 6th step: same matrix
    assert torch.allclose(nearby, noise[4], atol=1e-2) and not torch.equal(nearby, noise[4])  # smooth in the state


def test_gsde_refuses_discrete_actions(runs_root, capsys):
    assert main(["train", "--algo", "ppo", "--env", "CartPole-v1", "--sde-sample-freq", "4", "--steps", "64",
                 "--no-progress", "--device", "cpu"]) == 2
    assert "discrete" in capsys.readouterr().err
    with pytest.raises(ValueError, match="discrete"):
        make_actor_critic(BOX3, gym.spaces.Discrete(2), sde_sample_freq=4)
