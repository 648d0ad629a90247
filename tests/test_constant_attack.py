"""The constant observation attack (a sensor's bias held for the episode) of `rlab bench rl-attack`."""

import dataclasses

import gymnasium as gym
import pytest
import torch
from torch.distributions import Categorical

from envs.observation_attacks import ball_corners, observation_scale, uniform_noise
from rlab.errors import UserError
from rlab.rl.attack_bench import RLAttackConfig, attack_curve, worst_constant
from rlab.rl.evaluation import greedy_actor, run_episodes

SCALE = observation_scale("CartPole-v1")
EPS = 0.016


def linear_controller(weights: list[float]):
    """push right when w . s > 0: a hand-made CartPole policy (s = x, x_dot, theta, theta_dot)."""
    w = torch.tensor(weights)
    return lambda obs: Categorical(logits=torch.stack((-(obs @ w) * 100, (obs @ w) * 100), -1))


POLE_ONLY = linear_controller([0.0, 0.0, 1.0, 0.5])  # balances the pole, blind to where the cart is
WITH_CART = linear_controller([0.05, 0.2, 1.0, 0.5])  # the same, plus feedback on the cart's position and speed


def actor(policy):
    return greedy_actor(policy, gym.spaces.Discrete(2))


def test_ball_corners_are_every_corner_or_a_seeded_draw_of_them():
    corners = ball_corners(EPS, SCALE)
    assert corners.shape == (16, 4) and len(torch.unique(corners, dim=0)) == 16
    assert torch.allclose(corners.abs(), (EPS * SCALE).expand(16, 4))
    scale8 = torch.arange(1.0, 9.0)
    drawn = ball_corners(0.1, scale8, limit=64, generator=torch.Generator().manual_seed(3))
    assert drawn.shape == (64, 8) and torch.allclose(drawn.abs(), (0.1 * scale8).expand(64, 8))
    assert torch.equal(drawn, ball_corners(0.1, scale8, limit=64, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="limit"):
        ball_corners(0.1, scale8, limit=0)


def test_a_bias_walks_a_pole_only_controller_off_the_track_and_not_one_that_watches_the_cart():
    act = actor(POLE_ONLY)
    clean = run_episodes(act, "CartPole-v1", 10, 0).mean()
    g = torch.Generator().manual_seed(0)
    noise = run_episodes(act, "CartPole-v1", 10, 0, perturb=lambda o: uniform_noise(o, EPS, SCALE, g)).mean()
    delta, picked = worst_constant(act, "CartPole-v1", EPS, SCALE, episodes=10, seed=0, device="cpu")
    assert torch.allclose(delta.abs(), EPS * SCALE), "the bias is a corner of the ball, never outside it"
    biased = run_episodes(act, "CartPole-v1", 10, 0, perturb=lambda o: o + delta).mean()
    assert clean == 500 and noise > 400
    assert biased < 0.5 * noise and picked < 0.5 * noise, (clean, noise, picked, biased)
    # position feedback tilts the pole back toward the centre: a constant bias only shifts where the cart rests
    watcher = actor(WITH_CART)
    _, picked_watcher = worst_constant(watcher, "CartPole-v1", EPS, SCALE, episodes=10, seed=0, device="cpu")
    assert picked_watcher >= 450, picked_watcher


def test_rl_attack_runs_constant_and_counts_it_in_the_worst_case():
    rows = attack_curve(POLE_ONLY, "CartPole-v1", [EPS], ["none", "random", "constant"], episodes=5, seed=0,
                        pgd_steps=2, device=torch.device("cpu"))
    got = {r["method"]: r for r in rows}
    assert got["constant"]["mean_return"] < got["random"]["mean_return"]
    assert got["worst"]["strongest"] == "constant"
    assert RLAttackConfig(run_dir="x", methods=["constant"]).methods == ["constant"]


def test_adv_constant_biases_that_share_of_the_envs_with_a_held_corner_and_attacks_the_rest():
    from rlab.rl.trainer import CONSTANT_HOLD, TrainConfig, _observation_attack, _with_constant_bias

    cfg = TrainConfig(env="CartPole-v1", adv_obs="pgd-worst", adv_eps=EPS, adv_constant=0.25)
    attack = _observation_attack(cfg, POLE_ONLY, torch.device("cpu"))
    torch.manual_seed(0)
    obs = (torch.rand(8, 4) - 0.5) * torch.tensor([0.2, 0.5, 0.1, 0.5])
    calls = 4 * CONSTANT_HOLD
    held = _with_constant_bias(lambda o: o, cfg, torch.device("cpu"))  # the step attack stubbed: only the bias
    biases = torch.stack([held(obs)[:2] - obs[:2] for _ in range(calls)])  # (calls, 2 envs, 4)
    assert torch.allclose(biases.abs(), (EPS * SCALE).expand_as(biases)), "always a corner of the ball"
    redraws = (biases[1:] != biases[:-1]).any(-1).sum(0)
    assert ((redraws >= 1) & (redraws <= 12)).all(), f"held ~{CONSTANT_HOLD} steps, then redrawn: {redraws}"
    seen = attack(obs)
    assert ((seen[2:] - obs[2:]).abs() <= EPS * SCALE + 1e-6).all() and (seen[2:] != obs[2:]).any()
    marked = _with_constant_bias(lambda o: o + 100.0, cfg, torch.device("cpu"))(obs)
    assert torch.equal(marked[2:], obs[2:] + 100.0), "the other 6 envs see --adv-obs's attack, and only it"
    assert ((marked[:2] - obs[:2]).abs() < 1).all()
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match="--adv-constant must be in"):
            TrainConfig(adv_obs="pgd", adv_eps=EPS, adv_constant=bad)
    with pytest.raises(UserError, match="--adv-constant configure --adv-obs"):
        TrainConfig(adv_constant=0.5)
    with pytest.raises(UserError, match="--adv-constant-scale sizes the bias of --adv-constant"):
        TrainConfig(adv_obs="pgd", adv_eps=EPS, adv_constant_scale=1.5)
    with pytest.raises(UserError, match="--adv-constant-scale sizes the bias of --adv-constant"):
        TrainConfig(env="CartPole-v1", robust=True, adv_eps=EPS, adv_constant=0.0, adv_constant_scale=1.5)
    wider = dataclasses.replace(cfg, adv_constant_scale=1.5)
    bias = _with_constant_bias(lambda o: o, wider, torch.device("cpu"))(obs)[:2] - obs[:2]
    assert torch.allclose(bias.abs(), (1.5 * EPS * SCALE).expand_as(bias)), "--adv-constant-scale 1.5: 1.5 x the corner"
