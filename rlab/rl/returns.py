"""The returns math of the policy-gradient lecture, as small pure tensor functions.

Hung-yi Lee, ML 2021/2022, "Policy Gradient" and "Actor-Critic": the advantage
A_t that weights grad log pi(a_t|s_t) climbs a ladder

    version 0   A_t = r_t                                   (immediate reward)
    version 1   A_t = G_t   = sum_{t'>=t} r_t'              (reward-to-go)
    version 2   A_t = G'_t  = sum_{t'>=t} gamma^(t'-t) r_t' (discounted reward-to-go)
    version 3   A_t = G'_t - b                              (baseline: batch mean,
                standardisation, or a learned state value V(s_t))
    version 3.5 / 4  A_t = r_t + gamma V(s_{t+1}) - V(s_t)  (advantage actor-critic)

and PPO uses GAE(lambda) (Schulman et al., 2016, "High-Dimensional Continuous
Control Using Generalized Advantage Estimation", arXiv:1506.02438).

Layout: every tensor is (T, N): T time steps of N vectorised environments, as a
Gymnasium 1.x vector env returns them. Episode ends are given per step:

    terminated[t]   the episode reached a terminal state: nothing follows, no bootstrap
    truncated[t]    the episode was cut by a time limit: the future is estimated by
                    the critic, V(s_{t+1}), from the final observation
    next_values[t]  V(s_{t+1}) for the transition at t (the final observation when
                    the episode ended at t). In Gymnasium's default next-step
                    autoreset mode this is simply V(obs[t+1]) (`next_state_values`).

At the rollout's last step (t = T-1) an unfinished episode is bootstrapped from
next_values[T-1]. Pass zeros there to get the pure Monte-Carlo sums of the
lecture (and mask the unfinished tail with `finished_episode_mask`).

With next-step autoreset, the step after an episode end is a reset step: the
action is ignored and the reward is 0. Its entries are meaningless and must be
excluded from the loss with `valid_step_mask`; the recursions below never let
them leak into the real steps, because every recursion stops at an episode end.
"""

from __future__ import annotations

import torch
from torch import Tensor

BASELINES = ("none", "mean", "standardize", "value")
RETURNS = ("immediate", "reward-to-go", "discounted")


def _check_shapes(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"returns math needs (T, N) tensors of one shape, got {shapes}")


def _check_gamma(gamma: float, name: str = "gamma") -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {gamma}")


def immediate_rewards(rewards: Tensor) -> Tensor:
    """Version 0: A_t = r_t, the reward right after the action (short-sighted)."""
    return rewards.clone()


def discounted_returns(rewards: Tensor, terminated: Tensor, truncated: Tensor, next_values: Tensor,
                       gamma: float) -> Tensor:
    """Discounted reward-to-go, computed backwards within each episode:

        G_t = r_t + gamma * 0                 if terminated[t]
        G_t = r_t + gamma * V(s_{t+1})        if truncated[t] or t = T-1 (bootstrap)
        G_t = r_t + gamma * G_{t+1}           otherwise

    gamma = 1 gives version 1 (reward-to-go), gamma < 1 version 2.
    """
    _check_shapes(rewards=rewards, terminated=terminated, truncated=truncated, next_values=next_values)
    _check_gamma(gamma)
    T = rewards.shape[0]
    not_terminal = (~terminated.bool()).to(rewards.dtype)
    ended = (terminated.bool() | truncated.bool()).to(rewards.dtype)
    returns = torch.empty_like(rewards)
    future = next_values[T - 1]
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            future = ended[t] * next_values[t] + (1.0 - ended[t]) * returns[t + 1]
        returns[t] = rewards[t] + gamma * not_terminal[t] * future
    return returns


def reward_to_go(rewards: Tensor, terminated: Tensor, truncated: Tensor, next_values: Tensor) -> Tensor:
    """Version 1: G_t = sum_{t'=t}^{end} r_t' (undiscounted `discounted_returns`)."""
    return discounted_returns(rewards, terminated, truncated, next_values, gamma=1.0)


def td_target(rewards: Tensor, terminated: Tensor, next_values: Tensor, gamma: float) -> Tensor:
    """One-step TD target: y_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}).

    A truncated step still bootstraps from V of its final observation.
    """
    _check_shapes(rewards=rewards, terminated=terminated, next_values=next_values)
    _check_gamma(gamma)
    return rewards + gamma * (~terminated.bool()).to(rewards.dtype) * next_values


def n_step_returns(rewards: Tensor, terminated: Tensor, truncated: Tensor, next_values: Tensor,
                   gamma: float, n: int) -> Tensor:
    """n-step return, cut at the episode end and at the rollout end:

        G^(n)_t = sum_{k=0}^{m-1} gamma^k r_{t+k} + gamma^m (1 - terminated_{t+m-1}) V(s_{t+m})

    with m = min(n, steps until the episode or the rollout ends). n = 1 is the TD
    target; n >= T is the bootstrapped Monte-Carlo return.
    """
    _check_shapes(rewards=rewards, terminated=terminated, truncated=truncated, next_values=next_values)
    _check_gamma(gamma)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    T = rewards.shape[0]
    not_terminal = (~terminated.bool()).to(rewards.dtype)
    ended = (terminated.bool() | truncated.bool()).to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    window_open = torch.ones_like(rewards)  # window_open[t]: the window started at t reaches step t+k
    for k in range(min(n, T)):
        w = window_open[: T - k]
        returns[: T - k] += w * gamma**k * rewards[k:]
        closes = ended[k:].clone() if k < n - 1 else torch.ones_like(ended[k:])
        closes[-1] = 1.0  # the rollout ends at step T-1
        returns[: T - k] += w * closes * gamma ** (k + 1) * not_terminal[k:] * next_values[k:]
        window_open[: T - k] = w * (1.0 - closes)
    return returns


def n_step_window(rewards: Tensor, terminated: Tensor, ended: Tensor, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """The n-step target of a replayed window (DQN with n-step returns; Sutton, 1988; Hessel et al., 2018):
    row b holds n consecutive transitions of one env, k = 0..n-1, starting at the sampled step t.

        m          = min(n, 1 + first k with ended_k)         (steps the window uses)
        G          = sum_{k=0}^{m-1} gamma^k r_k
        discount   = gamma^m (1 - terminated_{m-1})
        y_t        = G + discount * Q'(s_{t+m})               (s_{t+m}: the next observation of step m-1)

    `ended` marks where a window must stop: an episode end (terminated or truncated)
    or the newest stored step (its successor is not in the buffer yet, or is older
    data). A truncated end still bootstraps; only `terminated` zeroes the discount.
    Returns (G, discount, m - 1) with shapes (B,), (B,), (B,) int64. n = 1 is the
    one-step `td_target`; this is `n_step_returns` at t for the window's steps.
    """
    if rewards.ndim != 2 or terminated.shape != rewards.shape or ended.shape != rewards.shape:
        raise ValueError(f"n_step_window needs (B, n) tensors of one shape, got rewards {tuple(rewards.shape)}, "
                         f"terminated {tuple(terminated.shape)}, ended {tuple(ended.shape)}")
    _check_gamma(gamma)
    B, n = rewards.shape
    stop = ended.bool() | terminated.bool()
    stop[:, -1] = True  # the window ends after n steps
    last = stop.to(torch.int8).argmax(dim=1)  # first k that stops (argmax returns the first maximum)
    k = torch.arange(n, device=rewards.device)
    used = (k.unsqueeze(0) <= last.unsqueeze(1)).to(rewards.dtype)
    powers = torch.full((n,), float(gamma), dtype=rewards.dtype, device=rewards.device) ** k
    returns = (rewards * powers * used).sum(dim=1)
    not_terminal = (~terminated.bool().gather(1, last.unsqueeze(1)).squeeze(1)).to(rewards.dtype)
    discount = float(gamma) ** (last + 1).to(rewards.dtype) * not_terminal
    return returns, discount, last.long()


def gae_advantages(rewards: Tensor, values: Tensor, terminated: Tensor, truncated: Tensor, next_values: Tensor,
                   gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation, GAE(gamma, lambda):

        delta_t = r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1}        (done = terminated or truncated)

    Returns (advantages, returns = A_t + V(s_t), the critic's regression target).
    lam = 0 gives the TD error (version 4), lam = 1 the bootstrapped return minus V.
    """
    _check_shapes(rewards=rewards, values=values, terminated=terminated, truncated=truncated, next_values=next_values)
    _check_gamma(gamma)
    _check_gamma(lam, "lambda")
    T = rewards.shape[0]
    deltas = td_target(rewards, terminated, next_values, gamma) - values
    carry = gamma * lam * (~(terminated.bool() | truncated.bool())).to(rewards.dtype)
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(T - 1, -1, -1):
        last = deltas[t] + carry[t] * last
        advantages[t] = last
    return advantages, advantages + values


def next_state_values(values: Tensor, last_value: Tensor) -> Tensor:
    """V(s_{t+1}) per step under next-step autoreset: values shifted by one, then V(obs_T)."""
    return torch.cat([values[1:], last_value.reshape(1, -1)], dim=0)


def valid_step_mask(first_is_reset: Tensor, terminated: Tensor, truncated: Tensor) -> Tensor:
    """True where the step is a real transition (not a next-step-autoreset reset step).

    Step t is a reset step when the episode ended at t-1; `first_is_reset` (N,)
    says whether that holds for t = 0 (the previous rollout ended an episode).
    """
    done = terminated.bool() | truncated.bool()
    prev_done = torch.cat([first_is_reset.bool().reshape(1, -1), done[:-1]], dim=0)
    return ~prev_done


def finished_episode_mask(terminated: Tensor, truncated: Tensor) -> Tensor:
    """True where the step's episode ends within the rollout (its Monte-Carlo sum is complete)."""
    done = (terminated.bool() | truncated.bool()).to(torch.int64)
    ends_after = torch.flip(torch.cumsum(torch.flip(done, [0]), 0), [0])  # episode ends at or after t
    return ends_after > 0


def subtract_baseline(returns: Tensor, baseline: str, values: Tensor | None = None,
                      mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Version 3: A_t = G_t - b.

        none         b = 0
        mean         b = mean of G over the batch (the lecture's b ~ E[R])
        standardize  A_t = (G_t - mean G) / std G
        value        b = V(s_t), a learned state value (actor-critic, version 3.5)

    Batch statistics use only the entries where `mask` is True.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; allowed: {', '.join(BASELINES)}")
    if baseline == "none":
        return returns.clone()
    if baseline == "value":
        if values is None:
            raise ValueError("baseline 'value' needs the critic's values V(s_t)")
        return returns - values
    selected = returns[mask.bool()] if mask is not None else returns.reshape(-1)
    if selected.numel() == 0:
        return returns.clone()
    mean = selected.mean()
    if baseline == "mean":
        return returns - mean
    std = selected.std(unbiased=False) if selected.numel() > 1 else torch.zeros((), dtype=returns.dtype)
    return (returns - mean) / (std + eps)


def potential_shaping(rewards, potential, next_potential, terminated, gamma: float):
    """r'_t = r_t + gamma * Phi(s_{t+1}) - Phi(s_t), with Phi(terminal) = 0 (Ng, Harada & Russell, 1999).

    Potential-based shaping leaves every policy's ranking, so the optimal policy, unchanged: along an
    episode the shaping terms telescope to gamma^T Phi(s_T) - Phi(s_0). Works on tensors and NumPy arrays
    alike (the vector-env wrappers shape NumPy rewards); terminated is boolean.
    """
    _check_gamma(gamma)
    return rewards + gamma * next_potential * ~terminated - potential


def normalize(x: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """(x - mean) / (std + eps) over the masked entries: PPO's advantage normalisation."""
    return subtract_baseline(x, "standardize", mask=mask, eps=eps)
