"""Adversarial observations against policies (Huang et al., 2017, "Adversarial Attacks on Neural Network Policies").

The attacker sees the observation s the agent is about to act on and replaces it by

    s' = s + delta,   |delta_i| <= eps * scale_i   (an L-infinity ball, eps per dimension scaled to its range)

chosen to push the agent off the action it would take:

    discrete (Categorical pi):   max_delta  CE(pi(s + delta), a*),   a* = argmax_a pi(a | s)
    continuous (Gaussian pi):    max_delta  || mu(s + delta) - mu(s) ||^2

FGSM is one signed-gradient step of size eps; PGD is `steps` steps of size 2.5 eps / steps
projected back onto the ball (Madry et al., 2018). For a discrete policy the attack is the attacks
package's FGSM / PGD (unbounded inputs) on a wrapper model z = s / scale -> logits of pi(z * scale),
where the ball is eps in every dimension; PGD stops on a sample once its action flips. The
Gaussian case has no labels, so it uses the same signed-gradient ascent on the mean distance
in a small local loop.

Flipping every action is a weak attack on a policy that dithers (CartPole's push left, push
right, ...): the flipped agent dithers too. "pgd-timed" attacks only the steps where the agent
is sure of its action (Lin et al., 2017, "Tactics of Adversarial Attack on Deep Reinforcement
Learning Agents", strategically-timed attack), which is where a wrong action costs.
`uniform_noise` is the baseline of the same size: delta uniform in the ball.

"pgd-worst" is the attack that makes a *consistent* error: the attacks package's PGD, targeted at
the env's worst action a_w(s) instead of "anything but a*" (Pattanaik et al., 2018, "Robust Deep
Reinforcement Learning with Adversarial Attacks", target the action of lowest Q; Lin et al., 2017,
and Hussenot et al., 2019, "Targeted Attacks on Deep Reinforcement Learning Agents through
Adversarial Observations", argue for targets over untargeted flips). The worst action comes from
the env's physics (WORST_ACTIONS); for CartPole it is the push that tips the pole further over,
a_w = push right when the pole leans left (theta < 0), else push left. Where the agent already
takes a_w the observation is left alone. Untargeted PGD is weak on CartPole because it also
flips the agent's destabilising dithers into stabilising pushes; a consistent push the wrong
way is what drops the pole. The worst action of a rule is not the worst action of every agent
(on a hand-made controller with strong theta-dot feedback, a fixed "push left" is stronger).
Measured figures (plain and adversarially trained PPO agents): the README's table and
`rlab bench rl-attack`.

"constant" (rlab bench rl-attack; Hussenot et al., 2019, whose CopyCAT attack is one fixed mask per target
action) is one delta held for the whole episode: a sensor's bias. `ball_corners` lists the candidates. It needs
no gradient and no model, and it is the attack an agent that balances on one observation cannot average away: on
CartPole a bias on the pole's angle makes the agent balance a pole that leans, which it can only do by
accelerating the cart toward the lean until it leaves the track.

"critic" is Pattanaik et al.'s (2018) critic-guided attack on an actor-critic agent with a Q critic
(DDPG, TD3, SAC): the perturbation that makes the actor pick the action its own critic values least
at the true state, min_delta Q(s, mu(s + delta)), by the same projected signed-gradient steps.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import gymnasium
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical, Distribution

OBSERVATION_ATTACKS = ("none", "random", "fgsm", "pgd", "pgd-timed", "pgd-worst", "critic")


def cartpole_worst_action(obs: torch.Tensor) -> torch.Tensor:
    """CartPole's worst push: away from the side the pole leans to (1 = right when theta < 0, else 0 = left)."""
    return (obs[:, 2] < 0).long()


# Per env family: obs (N, d) -> the action (N,) that does the most harm, from the env's physics.
WORST_ACTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"CartPole": cartpole_worst_action}

# Per-dimension scale of observation dimensions whose observation space is unbounded:
# 2 * max |value| over 20,000 random-policy steps (seed 0), rounded up.
TYPICAL_RANGES: dict[str, dict[int, float]] = {
    "CartPole": {1: 5.0, 3: 6.4},   # cart velocity (max 2.49), pole angular velocity (max 3.16)
}


def _env_family(env_id: str) -> str:
    """'CartPole-v1' and 'rlab/TorchCartPole-v1' -> 'CartPole'."""
    name = env_id.split("/")[-1].split("-v")[0]
    return name[len("Torch"):] if name.startswith("Torch") else name


def worst_action_rule(env_id: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The target rule of "pgd-worst" for `env_id`: obs (N, d) -> int64 actions (N,)."""
    family = _env_family(env_id)
    if family not in WORST_ACTIONS:
        raise ValueError(f"attack 'pgd-worst' needs a worst-action rule for {env_id}; known env families: "
                         f"{', '.join(sorted(WORST_ACTIONS))} (use pgd or pgd-timed on other envs)")
    return WORST_ACTIONS[family]


@functools.lru_cache(maxsize=None)
def _observation_scale(env_id: str) -> tuple[float, ...]:
    try:
        env = gymnasium.make(env_id)
    except gymnasium.error.Error as e:
        raise ValueError(f"cannot make environment {env_id!r} to read its observation space: {e}") from None
    space = env.observation_space
    if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
        env.close()
        raise ValueError(f"observation attacks need a flat Box observation space; {env_id} has {space}")
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    scale = high - low
    table = TYPICAL_RANGES.get(_env_family(env_id), {})
    unbounded = [i for i in range(len(scale)) if not np.isfinite(scale[i]) and i not in table]
    if unbounded:
        measured = _measured_ranges(env)
        for i in unbounded:
            scale[i] = measured[i]
    for i, value in table.items():
        if not np.isfinite(scale[i]):
            scale[i] = value
    env.close()
    return tuple(float(max(s, 1e-6)) for s in scale)


def _measured_ranges(env: gymnasium.Env, steps: int = 5000) -> np.ndarray:
    """2 * max |observation| per dimension over `steps` random-policy steps (seed 0)."""
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    peak = np.abs(obs).astype(np.float64)
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        peak = np.maximum(peak, np.abs(obs))
        if terminated or truncated:
            obs, _ = env.reset()
    return 2 * peak


def observation_scale(env_id: str) -> torch.Tensor:
    """Per-dimension scale of `env_id`'s observations (float32, shape (obs_dim,)).

    high - low where the observation space is bounded; else the fixed table of typical
    ranges (TYPICAL_RANGES, e.g. CartPole's velocities); else 2 * max |value| measured over
    5,000 random-policy steps with seed 0.
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a Gymnasium id string, got {type(env_id).__name__}")
    return torch.tensor(_observation_scale(env_id), dtype=torch.float32)


def uniform_noise(obs: torch.Tensor, eps: float, scale: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """obs + delta, delta uniform in the ball |delta_i| <= eps * scale_i (the random baseline)."""
    u = torch.rand(obs.shape, generator=generator, dtype=obs.dtype, device=obs.device if generator is None else generator.device)
    return obs + (2 * u.to(obs.device) - 1) * eps * scale


def ball_corners(eps: float, scale: torch.Tensor, limit: int = 64,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Corners of the ball |delta_i| <= eps * scale_i, one per row (shape (k, d)): all 2^d of them where
    2^d <= limit, else `limit` sign patterns drawn uniformly with `generator`."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    d = scale.numel()
    if 2 ** d > limit:
        return random_corners(limit, eps * scale, generator)
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=d)))
    return signs.to(scale) * eps * scale


def random_corners(n: int, radius: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """n corners of the box |delta_i| <= radius_i drawn uniformly (shape (n, d)): each sign a fair coin from
    `generator` (None: torch's global RNG), on radius's device."""
    signs = torch.randint(0, 2, (n, radius.numel()), generator=generator, device=radius.device)
    return (signs * 2 - 1).to(radius) * radius


class _ScaledPolicyLogits(nn.Module):
    """z = s / scale  ->  logits of pi(z * scale): in z the eps-ball is the same in every dimension."""

    def __init__(self, policy: Callable[[torch.Tensor], Distribution], scale: torch.Tensor):
        super().__init__()
        self.policy, self.scale = policy, scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.policy(z * self.scale).logits


def _attack_seed(generator: torch.Generator | None) -> int | None:
    return None if generator is None else int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))


def _attack_categorical(policy, obs: torch.Tensor, eps: float, method: str, scale: torch.Tensor, steps: int,
                        generator: torch.Generator | None,
                        worst_action: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """FGSM / PGD of the attacks package in z = s / scale: untargeted against the clean greedy action a*,
    or ("pgd-worst") targeted at worst_action(s) on the observations where a* is not already that action."""
    import attacks

    with torch.no_grad():
        clean_action = policy(obs).logits.argmax(-1)
    seed = _attack_seed(generator)
    if method == "fgsm":
        attack = attacks.FGSM(bounds=None, seed=seed)
    else:
        attack = attacks.PGD(steps=steps, rel_stepsize=2.5 / steps, bounds=None, seed=seed)
    model = _ScaledPolicyLogits(policy, scale)
    if method != "pgd-worst":
        return attack(model, obs / scale, clean_action, eps=eps).x_adv.detach() * scale
    target = torch.as_tensor(worst_action(obs), device=obs.device).long()
    if target.shape != clean_action.shape:
        raise ValueError(f"worst_action must return one action per observation, shape {tuple(clean_action.shape)}, "
                         f"got {tuple(target.shape)}")
    todo = target != clean_action
    x_adv = obs.clone()
    if todo.any():
        result = attack(model, obs[todo] / scale, clean_action[todo], eps=eps, target=target[todo])
        x_adv[todo] = result.x_adv.detach() * scale
    return x_adv


def _signed_gradient_ascent(loss_fn: Callable[[torch.Tensor], torch.Tensor], obs: torch.Tensor, start: torch.Tensor,
                            radius: torch.Tensor, n_steps: int, alpha: float) -> torch.Tensor:
    """x <- Proj_{|x - s| <= radius}(x + alpha * radius * sign(grad loss(x))), `n_steps` times."""
    x_adv = start
    for _ in range(n_steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x_adv), x_adv)
        x_adv = obs + (x_adv.detach() + alpha * radius * grad.sign() - obs).clamp(-radius, radius)
    return x_adv.detach()


def _attack_gaussian(policy, obs: torch.Tensor, eps: float, method: str, scale: torch.Tensor, steps: int,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Ascent on ||mu(s') - mu(s)||^2 inside the ball, from a random start (the gradient is 0 at s itself)."""
    with torch.no_grad():
        mean_clean = policy(obs).mean
    n_steps, alpha = (1, 1.0) if method == "fgsm" else (steps, 2.5 / steps)
    return _signed_gradient_ascent(lambda x: (policy(x).mean - mean_clean).square().sum(), obs,
                                   uniform_noise(obs, eps / 2, scale, generator), eps * scale, n_steps, alpha)


def _attack_critic(agent, obs: torch.Tensor, eps: float, method: str, scale: torch.Tensor, steps: int) -> torch.Tensor:
    """Descent on Q(s, mu(s')) over s' in the ball (Pattanaik et al., 2018): Q at the true s, the actor at s'."""
    n_steps, alpha = (1, 1.0) if method == "fgsm" else (steps, 2.5 / steps)
    return _signed_gradient_ascent(lambda x: -agent.q(obs, agent.pi(x).mean).sum(), obs, obs, eps * scale, n_steps,
                                   alpha)


def perturb_observations(policy: Callable[[torch.Tensor], Distribution], obs: torch.Tensor, eps: float,
                         method: str, scale: torch.Tensor, steps: int = 10,
                         generator: torch.Generator | None = None, confidence: float = 0.8,
                         worst_action: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Adversarial observations s' with |s' - s| <= eps * scale per dimension (Huang et al., 2017).

    Args:
        policy: obs (N, d) -> torch.distributions.Distribution (Categorical, or Normal / Independent Normal).
        obs: (N, d) float observations as the agent sees them (raw, un-normalised).
        eps: radius as a fraction of each dimension's scale (>= 0).
        method: "pgd", "fgsm", "random" (uniform in the ball), "none" (unchanged), or "pgd-timed":
            PGD only where the agent is sure, max_a pi(a | s) >= confidence (the strategically-timed
            attack of Lin et al., 2017; discrete policies only), or "pgd-worst": PGD targeted at
            worst_action(s) (discrete policies only), or "critic": min Q(s, mu(s')) with the agent's own
            critic (agents with `q(obs, action)`: DDPG, TD3, SAC; Pattanaik et al., 2018).
        scale: (d,) per-dimension scale, e.g. observation_scale(env_id).
        steps: PGD iterations.
        generator: torch RNG for the random baseline and the Gaussian random start.
        confidence: threshold of "pgd-timed".
        worst_action: target rule of "pgd-worst", obs (N, d) -> int64 actions (N,), e.g. worst_action_rule(env_id).

    Returns a detached tensor of obs's shape, dtype and device. Parameter gradients are untouched.
    """
    if method not in OBSERVATION_ATTACKS:
        raise ValueError(f"unknown observation attack {method!r}; allowed: {', '.join(OBSERVATION_ATTACKS)}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    obs = torch.as_tensor(obs)
    if obs.ndim != 2 or not obs.dtype.is_floating_point:
        raise ValueError(f"obs must be a float tensor of shape (N, obs_dim), got {obs.dtype} {tuple(obs.shape)}")
    scale = torch.as_tensor(scale, dtype=obs.dtype, device=obs.device)
    if scale.shape != obs.shape[1:]:
        raise ValueError(f"scale must have shape ({obs.shape[1]},) to match obs, got {tuple(scale.shape)}")
    if method == "pgd-worst" and not callable(worst_action):
        raise ValueError("method 'pgd-worst' needs worst_action=obs -> target actions, e.g. worst_action_rule(env_id)")
    if method == "none" or eps == 0:
        return obs.detach().clone()
    if method == "random":
        return uniform_noise(obs.detach(), eps, scale, generator)
    obs = obs.detach()
    with torch.enable_grad():
        with torch.no_grad():
            dist = policy(obs)
        if isinstance(dist, Categorical) and method == "critic":
            raise ValueError("method 'critic' needs a continuous actor with a Q critic (ddpg, td3, sac), "
                             "not a discrete policy")
        if isinstance(dist, Categorical):
            x_adv = _attack_categorical(policy, obs, eps, method, scale, steps, generator, worst_action)
            if method == "pgd-timed":
                x_adv = torch.where(dist.probs.amax(-1, keepdim=True) >= confidence, x_adv, obs)
        elif method == "critic":
            if not callable(getattr(policy, "q", None)):
                raise ValueError("method 'critic' needs an agent with a Q critic q(obs, action) (ddpg, td3, sac)")
            x_adv = _attack_critic(policy, obs, eps, "pgd", scale, steps)
        elif method in ("pgd-timed", "pgd-worst"):
            raise ValueError(f"method {method!r} needs a discrete (Categorical) policy; use 'pgd' for Gaussian ones")
        elif hasattr(dist, "mean"):
            x_adv = _attack_gaussian(policy, obs, eps, method, scale, steps, generator)
        else:
            raise TypeError(f"policy must return a Categorical or Gaussian distribution, got {type(dist).__name__}")
    radius = eps * scale
    return torch.maximum(torch.minimum(x_adv, obs + radius), obs - radius).detach()
