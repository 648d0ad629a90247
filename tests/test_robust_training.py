"""Robust training: SA-PPO's state-adversarial regulariser (rlab.rl.algos.sappo) and `rlab train --robust`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.distributions import Categorical

from rlab.cli import main
from rlab.errors import UserError
from rlab.rl.algos.sappo import state_adversarial_kl
from rlab.rl.robust import ROBUST_PRESETS
from rlab.rl.trainer import TrainConfig, resolve_with_sources


def test_robust_resolves_to_the_documented_configuration():
    cfg, sources = resolve_with_sources(TrainConfig(env="CartPole-v1", robust=True, adv_eps=0.016))
    preset = ROBUST_PRESETS["CartPole-v1"]
    assert cfg.algo == "ppo" and cfg.adv_obs == "pgd-worst" and (cfg.adv_constant, cfg.adv_constant_scale) == (0.5, 1.5)
    assert cfg.adv_eps == 0.0175 and cfg.adv_margin == 35 / 32, "judged at 0.016, trained in a ball 35/32 as wide"
    assert sources["adv_eps"] == "1.09375 x --adv-eps 0.016 (robust preset)"
    assert (cfg.hidden, cfg.gamma, cfg.gae_lambda, cfg.steps, cfg.n_steps) == ([128, 128], 0.999, 0.95, 200_000, 64), \
        "the documented values"
    assert cfg.adv_frac is None, "every observation of the other envs is attacked"
    for name, value in preset.items():
        assert getattr(cfg, name) == value, name
        assert sources[name] == "robust preset", name
    assert cfg.lr == 1e-3 and sources["lr"] == "preset CartPole-v1", "the env's PPO preset still applies underneath"
    explicit, _ = resolve_with_sources(TrainConfig(env="CartPole-v1", adv_obs="pgd-worst", adv_eps=0.0175,
                                                   adv_constant=0.5, adv_constant_scale=1.5, hidden=[128, 128],
                                                   steps=200_000, gamma=0.999, gae_lambda=0.95, n_steps=64))
    assert dataclasses.asdict(explicit) == {**dataclasses.asdict(cfg), "robust": False, "adv_margin": None}, \
        "--robust is these training options and nothing else"
    exact, sources = resolve_with_sources(TrainConfig(env="CartPole-v1", robust=True, adv_eps=0.016, adv_margin=1.0))
    assert exact.adv_eps == 0.016 and sources["adv_margin"] == "command line"
    with pytest.raises(UserError, match="--adv-margin sets how far past --adv-eps the --robust preset trains"):
        TrainConfig(env="CartPole-v1", adv_obs="pgd", adv_eps=0.016, adv_margin=1.0)
    with pytest.raises(UserError, match="outside"):
        resolve_with_sources(TrainConfig(env="CartPole-v1", robust=True, adv_eps=0.99))


def test_robust_options_are_overridable_and_refused_without_a_budget_or_a_preset():
    cfg, sources = resolve_with_sources(TrainConfig(env="CartPole-v1", robust=True, adv_eps=0.02, algo="sa-ppo",
                                                    kappa=0.5, steps=1000))
    assert (cfg.kappa, sources["kappa"], cfg.steps, sources["steps"]) == (0.5, "command line", 1000, "command line")
    assert cfg.sa_eps == cfg.adv_eps == 0.02 * 35 / 32 and sources["sa_eps"] == "robust preset", \
        "SA-PPO's ball follows the training attack's"
    assert cfg.hidden == [128, 128] and cfg.gamma == 0.999
    with pytest.raises(UserError, match="--kappa is not an option of --algo ppo"):
        TrainConfig(env="CartPole-v1", robust=True, adv_eps=0.02, kappa=0.5)
    with pytest.raises(UserError, match="--robust needs --adv-eps"):
        TrainConfig(env="CartPole-v1", robust=True)
    with pytest.raises(UserError, match="preset for CartPole-v1, rlab/TorchCartPole-v1, not Acrobot-v1"):
        resolve_with_sources(TrainConfig(env="Acrobot-v1", robust=True, adv_eps=0.05))


def test_robust_run_saves_every_choice_and_its_source(runs_root, capsys):
    assert main(["train", "--env", "CartPole-v1", "--robust", "--adv-eps", "0.016", "--steps", "256", "--n-envs", "4",
                 "--hidden", "16", "--no-progress", "--eval-episodes", "1", "--device", "cpu"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    options = json.loads((run / "config.json").read_text())["options"]
    assert options["algo"] == "ppo" and options["robust"] is True and options["gamma"] == 0.999
    sources = options["option_sources"]
    assert sources["gamma"] == "robust preset" and sources["hidden"] == "command line"
    assert run.name.startswith("CartPole-v1__ppo__0__")


class Linear(torch.nn.Module):
    """pi(s) = softmax(W s): the tiniest policy with a `pi` and a `forward`."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.w = torch.nn.Linear(4, 2)

    def pi(self, obs):
        return Categorical(logits=self.w(obs))

    forward = pi


def test_the_inner_max_beats_random_points_of_the_ball_and_stays_in_it():
    agent, obs, radius = Linear(), torch.randn(32, 4), torch.tensor([0.1, 0.2, 0.05, 0.3])
    worst = state_adversarial_kl(agent, obs, radius, steps=10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = agent.pi(obs)
        random_kl = max(torch.distributions.kl_divergence(clean, agent.pi(obs + (2 * torch.rand_like(obs) - 1) * radius))
                        .mean() for _ in range(20))
    assert worst > random_kl > 0
    # for a linear policy the worst delta is a corner of the ball: radius * sign(w_1 - w_0) (or its negation)
    corner = radius * (agent.w.weight[1] - agent.w.weight[0]).sign()
    with torch.no_grad():
        best = torch.stack([torch.distributions.kl_divergence(clean, agent.pi(obs + s * corner)) for s in (1, -1)])
    assert best.amax(0).mean() * 0.9 <= worst <= best.amax(0).mean() + 1e-6


def test_descending_the_regulariser_makes_the_policy_smoother():
    agent, obs, radius = Linear(1), torch.randn(64, 4) * 2, torch.full((4,), 0.2)
    g = torch.Generator().manual_seed(0)
    before = state_adversarial_kl(agent, obs, radius, 5, g).item()
    opt = torch.optim.SGD(agent.parameters(), lr=2.0)
    for _ in range(60):
        loss = state_adversarial_kl(agent, obs, radius, 5, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert state_adversarial_kl(agent, obs, radius, 5, g).item() < 0.5 * before
