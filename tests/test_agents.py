"""Policies, observation normalisation, the updates, the collect loop and a PPO learning test."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent

from rlab.rl import returns as R
from rlab.rl.algos import ac, ppo, vpg
from rlab.rl.environments import make_envs
from rlab.rl.onpolicy import Batch, Collector, Rollout, make_optimizer
from rlab.rl.policies import ObsNorm, make_actor_critic
from rlab.rl.trainer import TrainConfig, algorithm_options, resolve, train

BOX4 = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def test_factory_picks_categorical_or_gaussian_and_evaluate_actions_agrees():
    torch.manual_seed(0)
    obs = torch.randn(7, 4)
    disc = make_actor_critic(BOX4, gym.spaces.Discrete(3))
    cont = make_actor_critic(BOX4, gym.spaces.Box(-2.0, 2.0, (2,), np.float32), log_std_init=-0.3)
    for agent, kind in ((disc, Categorical), (cont, Independent)):
        dist = agent(obs)
        assert isinstance(dist, kind)
        actions = dist.sample()
        logp, entropy, value = agent.evaluate_actions(obs, actions)
        assert torch.allclose(logp, dist.log_prob(actions), atol=1e-5)
        assert torch.allclose(entropy, dist.entropy(), atol=1e-5)
        assert value.shape == (7,) and torch.allclose(value, agent.v(obs))
        a, lp, v = agent.act(obs)
        assert torch.allclose(lp, dist.log_prob(a), atol=1e-5)
    assert torch.equal(disc.act(obs, deterministic=True)[0], disc(obs).probs.argmax(-1))
    clipped = cont.env_action(torch.tensor([[5.0, -5.0]]))
    assert clipped.tolist() == [[2.0, -2.0]]
    with pytest.raises(ValueError, match="allowed"):
        make_actor_critic(BOX4, gym.spaces.MultiBinary(3))


def test_obs_norm_matches_statistics_of_all_data_and_is_saved():
    torch.manual_seed(0)
    norm = ObsNorm(3)
    chunks = [torch.randn(50, 3) * 4 + 2, torch.randn(20, 3) - 7, torch.randn(90, 3) * 0.1]
    for c in chunks:
        norm.update(c)
    data = torch.cat(chunks)
    assert torch.allclose(norm.mean, data.mean(0), atol=1e-4)
    assert torch.allclose(norm.var, data.var(0, unbiased=False), rtol=1e-3)
    assert set(norm.state_dict()) == {"mean", "var", "count"}
    z = norm(data)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-3)


def _batch_favouring_action_zero(agent):
    obs = torch.randn(64, 4)
    actions = torch.randint(0, 2, (64,))
    with torch.no_grad():
        logp, _, values = agent.evaluate_actions(obs, actions)
    advantages = torch.where(actions == 0, 1.0, -1.0)
    return Batch(obs, actions, logp, values, advantages, values + advantages)


@pytest.mark.parametrize("update", ["vpg", "ppo"])
def test_an_update_moves_probability_towards_positive_advantage(update):
    torch.manual_seed(1)
    agent = make_actor_critic(BOX4, gym.spaces.Discrete(2), normalize_obs=False)
    b = _batch_favouring_action_zero(agent)
    before = agent(b.obs).probs[:, 0].mean().item()
    opt = make_optimizer(agent.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    if update == "vpg":
        for _ in range(10):
            vpg.update(vpg.VPGOptions(), agent, opt, b, 1.0, generator)
    else:
        out = ppo.update(ppo.PPOOptions(epochs=10, minibatch_size=32, anneal_lr=False), agent, opt, b, 1.0, generator)
        assert 0.0 < out["losses/clipfrac"] <= 1.0
    assert agent(b.obs).probs[:, 0].mean().item() > before + 0.02


def test_collector_counts_episodes_under_next_step_autoreset():
    envs = make_envs("CartPole-v1", 4)
    agent = make_actor_critic(envs.single_observation_space, envs.single_action_space)
    torch.manual_seed(0)
    collector = Collector(envs, agent, torch.device("cpu"), seed=3)
    running_before = collector.ep_return.sum()
    ro = collector.collect(120)
    valid = R.valid_step_mask(ro.first_is_reset, ro.terminated, ro.truncated)
    finished, lengths = collector.pop_episodes()
    assert len(finished) == int((ro.terminated | ro.truncated).sum())
    # CartPole pays 1 per real step: reset steps must pay 0 and count nowhere
    assert torch.all(ro.rewards[~valid] == 0)
    assert ro.rewards[valid].sum().item() == pytest.approx(sum(finished) + collector.ep_return.sum() - running_before)
    assert finished == [float(n) for n in lengths]
    envs.close()


def test_truncation_bootstraps_and_termination_does_not_in_the_training_batch():
    options = ac.ACOptions(critic="td")
    agent = make_actor_critic(BOX4, gym.spaces.Discrete(2), normalize_obs=False)
    obs = torch.randn(2, 2, 4)
    last_obs = torch.randn(2, 4)
    ro = Rollout(obs=obs, actions=torch.zeros(2, 2, dtype=torch.long), logp=torch.zeros(2, 2),
                 values=agent.v(obs).detach(), rewards=torch.ones(2, 2),
                 terminated=torch.tensor([[True, False], [False, False]]),
                 truncated=torch.tensor([[False, True], [False, False]]),
                 first_is_reset=torch.tensor([False, False]), last_obs=last_obs)
    b = ac.advantages(options, agent, ro)
    assert len(b.obs) == 2  # step 1 of both envs is a reset step
    with torch.no_grad():
        v_final = agent.v(obs[1, 1]).item()
    assert b.returns.tolist() == pytest.approx([1.0, 1.0 + options.gamma * v_final])


@pytest.mark.slow
def test_ppo_learns_cartpole(runs_root):
    """A random policy scores ~22; a broken PPO cannot reach 150 in 25k steps."""
    cfg = TrainConfig(algo="ppo", env="CartPole-v1", steps=25_000, seed=0, progress=False, eval_episodes=10, device="cpu")
    run = train(cfg)
    import json

    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval/mean_return"] >= 150, summary


@pytest.mark.slow
def test_vpg_reward_to_go_improves_on_cartpole(runs_root):
    cfg = TrainConfig(algo="vpg", env="CartPole-v1", returns="reward-to-go", baseline="standardize", steps=28_672,
                      seed=0, progress=False, device="cpu")
    run = train(cfg)
    import csv

    rows = [float(r["charts/episode_return"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert rows[0] < 40 and rows[-1] > 60, rows


def test_presets_fill_only_missing_fields():
    cfg = resolve(TrainConfig(algo="ppo", env="CartPole-v1", gamma=0.9))
    assert cfg.gamma == 0.9 and cfg.n_steps == 32 and cfg.epochs == 20 and cfg.variant == "ppo"
    assert resolve(TrainConfig(algo="vpg", returns="immediate", baseline="none")).variant == "vpg / immediate / none baseline"
    _, options = algorithm_options(dataclasses.asdict(cfg))
    assert all(getattr(cfg, f.name) == getattr(options, f.name) is not None for f in dataclasses.fields(options))
    assert cfg.returns is None and cfg.critic is None  # options of other algorithms stay unset
