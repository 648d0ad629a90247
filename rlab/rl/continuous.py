"""The pieces DDPG, TD3 and SAC share: actions in a Box, the squashed Gaussian, Q critics and their targets.

Actions live in two units. The networks work in the unit box [-1, 1]^d (a tanh
output); the environment receives the affine image in its Box [low, high]:

    a_env  = low + (u + 1) / 2 * (high - low)          `to_box`
    u      = 2 (a_env - low) / (high - low) - 1        `from_box`

so the bounds are met exactly, never by clipping a network's output. The replay
buffer stores env actions (the random warm-up actions are drawn in the Box), and
the critics see their unit-box image.

Squashed Gaussian policy (Haarnoja et al., 2018, "Soft Actor-Critic", appendix C):
u = mu + sigma * xi, xi ~ N(0, I), a = tanh(u). By the change of variables,

    log pi(a | s) = sum_i [ log N(u_i; mu_i, sigma_i) - log(1 - tanh(u_i)^2) ]
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2 u))         (stable for large |u|)

`squashed_gaussian_log_prob` is this density of the unit-box action (the
convention of Stable-Baselines3, whose entropy target -dim(A) is set on that
scale); the Box's affine map adds the constant -sum_i log((high_i - low_i) / 2),
which `SquashedNormal.log_prob` (the env-unit distribution of `pi`) includes.

Targets of the critics (y = G + discount * ..., G and discount from the n-step
window of rlab/rl/replay.py; a terminal state has discount 0):

    DDPG  y = G + discount * Q'(s', mu'(s'))                                   (Lillicrap et al., 2016)
    TD3   y = G + discount * min_k Q'_k(s', clip(mu'(s') + clip(eps, -c, c), -1, 1)),  eps ~ N(0, sigma~)
                                                                               (Fujimoto et al., 2018)
    SAC   y = G + discount * (min_k Q'_k(s', a') - alpha log pi(a' | s')),  a' ~ pi(. | s')
                                                                               (Haarnoja et al., 2018)

Target networks follow the online ones by Polyak averaging,
theta' <- tau theta + (1 - tau) theta' (`rlab.rl.offpolicy.polyak_update`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import AffineTransform, Independent, Normal, TanhTransform, TransformedDistribution

from rlab.rl.policies import ObsNorm

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the squashed Gaussian's log sigma is clamped here (SB3, CleanRL)


def to_box(u: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Unit-box actions u in [-1, 1]^d -> env actions in [low, high]."""
    return low + 0.5 * (u + 1.0) * (high - low)


def from_box(a: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Env actions in [low, high] -> unit-box actions in [-1, 1]^d."""
    return 2.0 * (a - low) / (high - low) - 1.0


def log_one_minus_tanh_squared(u: Tensor) -> Tensor:
    """log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)): the tanh's log-Jacobian, finite for any u."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


def squashed_gaussian_log_prob(u: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """log pi(tanh(u)) of the unit-box action a = tanh(u), u ~ N(mu, exp(log_std)^2): summed over the last dim."""
    gaussian = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return (gaussian - log_one_minus_tanh_squared(u)).sum(-1)


def squashed_gaussian_sample(mu: Tensor, log_std: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
    """(a = tanh(mu + sigma xi), log pi(a)): the reparameterised draw of SAC's actor (xi ~ N(0, I) given)."""
    u = mu + log_std.exp() * xi
    return torch.tanh(u), squashed_gaussian_log_prob(u, mu, log_std)


class SquashedNormal(TransformedDistribution):
    """pi(. | s) in env units: N(mu, sigma) -> tanh -> the Box's affine map. `mean` is the deterministic action
    low + (tanh(mu) + 1) / 2 (high - low) (the median; the exact mean has no closed form), as SB3 plays it."""

    def __init__(self, mu: Tensor, std: Tensor, low: Tensor, high: Tensor):
        self.mu, self.low, self.high = mu, low, high
        super().__init__(Independent(Normal(mu, std, validate_args=False), 1, validate_args=False),
                         [TanhTransform(cache_size=1), AffineTransform((low + high) / 2, (high - low) / 2, event_dim=1)],
                         validate_args=False)

    @property
    def mean(self) -> Tensor:
        return to_box(torch.tanh(self.mu), self.low, self.high)


def min_q(q_values: Tensor) -> Tensor:
    """min_k Q_k over the critics (dim 0): the clipped double-Q estimate of TD3 and SAC (one critic: itself)."""
    return q_values.min(0).values


def ddpg_target(returns: Tensor, discounts: Tensor, next_q: Tensor) -> Tensor:
    """y = G + discount * min_k Q'_k(s', a'): next_q (n_critics, B) at the target action (DDPG: one critic)."""
    return returns + discounts * min_q(next_q)


def sac_target(returns: Tensor, discounts: Tensor, next_q: Tensor, next_log_prob: Tensor, alpha: Tensor | float) -> Tensor:
    """y = G + discount * (min_k Q'_k(s', a') - alpha log pi(a' | s')), a' ~ pi(. | s'): the soft target."""
    return returns + discounts * (min_q(next_q) - alpha * next_log_prob)


def smoothed_target_action(action: Tensor, noise_std: float, noise_clip: float, generator: torch.Generator) -> Tensor:
    """TD3's target policy smoothing: clip(a + clip(eps, -c, c), -1, 1), eps ~ N(0, noise_std^2), unit-box actions."""
    eps = torch.randn(action.shape, generator=generator).to(action.device) * noise_std
    return (action + eps.clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


def critic_loss(q_values: Tensor, y: Tensor, weights: Tensor) -> Tensor:
    """sum_k mean_i w_i (Q_k(s_i, a_i) - y_i)^2: every critic regresses on the one target."""
    return (weights * (q_values - y).square()).mean(-1).sum()


@contextmanager
def frozen(params: list[Tensor]) -> Iterator[list[Tensor]]:
    """The parameters without gradients inside the block (Spinning Up's habit): the actor's loss backpropagates
    through the critics to the action only, not into their weights."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield params
    finally:
        for p in params:
            p.requires_grad_(True)


def joint_step(optimizer: torch.optim.Optimizer, loss: Tensor, modules: tuple[nn.Module, ...],
               max_grad_norm: float) -> None:
    """One backward of the summed losses and one optimizer step for actor, critics (and temperature).

    Each loss reaches only its own parameters (the actor's through `frozen` critics, the temperature's through a
    detached log-prob, the critics' targets without gradient), so the gradients are those of separate steps; the
    one difference from Stable-Baselines3's order is that the actor climbs the critics of before this step's
    critic update, as in the SAC authors' implementation, which applies all gradients of a step together. One
    backward and one fused Adam step instead of two or three: the Python overhead of a step at Pendulum's sizes.
    Clipping (max_grad_norm > 0) is per module, as with separate optimizers."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm > 0:
        for module in modules:
            nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()


class OrnsteinUhlenbeckNoise:
    """x <- x + theta (0 - x) dt + sigma sqrt(dt) N(0, I), per env and action dim (Uhlenbeck & Ornstein, 1930):
    the temporally correlated exploration of the DDPG paper (theta 0.15, dt 0.01 as in SB3). Its state `x`
    is saved for resume; an env's row restarts from 0 when its episode ends (`reset`, as SB3's)."""

    def __init__(self, shape: tuple[int, ...], sigma: float, theta: float = 0.15, dt: float = 1e-2):
        self.sigma, self.theta, self.dt = sigma, theta, dt
        self.x = torch.zeros(shape)

    def __call__(self, generator: torch.Generator) -> Tensor:
        xi = torch.randn(self.x.shape, generator=generator)
        self.x = self.x - self.theta * self.x * self.dt + self.sigma * math.sqrt(self.dt) * xi
        return self.x

    def reset(self, done: np.ndarray) -> None:
        """x <- 0 for the envs whose episode just ended (done: a bool per env)."""
        self.x[torch.from_numpy(np.asarray(done, dtype=bool))] = 0.0


def relu_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLUs between, PyTorch's default init (as SB3's and CleanRL's DDPG, TD3 and SAC)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class EnsembleMLP(nn.Module):
    """K ReLU MLPs of the same sizes evaluated as one: layer l is x_k <- x_k W_lk + b_lk for all k in one batched
    matmul (`baddbmm`), so TD3's and SAC's twin critics cost one pass, not two (~40% less CPU for 64x64 critics
    at batch 256). Each member is initialised as an `nn.Linear` stack (PyTorch's default: U(+-1/sqrt(fan_in)))."""

    def __init__(self, k: int, sizes: list[int]):
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(k, n_in, n_out))
                                        for n_in, n_out in zip(sizes, sizes[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(k, 1, n_out)) for n_out in sizes[1:])
        with torch.no_grad():
            for w, b in zip(self.weights, self.biases):
                bound = 1.0 / math.sqrt(w.shape[1])
                w.uniform_(-bound, bound)
                b.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in), the same input for every member, or (K, N, in) -> (K, N, out)."""
        h = x.expand(len(self.weights[0]), *x.shape) if x.dim() == 2 else x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        return h


class ContinuousQAgent(nn.Module):
    """An actor over a Box and Q critics on (s, a): the agent of DDPG and TD3 (deterministic actor mu(s)) and
    SAC (squashed Gaussian pi(. | s)).

    `pi(obs)` is the policy as a distribution in env units whose `mean` is the deterministic action (what
    evaluation and the observation attacks use): SAC's `SquashedNormal`, or for a deterministic actor the
    Gaussian of its exploration noise around mu(s). `q(obs, action)` is Q_1(s, a) of env actions (the
    critic-guided attack minimises it). Observation normalisation is inside, shared by actor and critics.
    """

    def __init__(self, obs_dim: int, low: Tensor, high: Tensor, hidden: tuple[int, ...], n_critics: int,
                 stochastic: bool, normalize_obs: bool = False, noise_std: float = 0.1):
        super().__init__()
        action_dim = len(low)
        self.stochastic, self.discrete = stochastic, False
        self.obs_norm = ObsNorm(obs_dim, enabled=normalize_obs)
        self.actor = relu_mlp([obs_dim, *hidden, (2 if stochastic else 1) * action_dim])
        self.critics = EnsembleMLP(n_critics, [obs_dim + action_dim, *hidden, 1])
        self.register_buffer("action_low", low.clone())
        self.register_buffer("action_high", high.clone())
        self.noise_std = noise_std

    def actor_head(self, obs: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Deterministic: mu(s) in the unit box. Stochastic: (mu, log sigma) of the Gaussian before the tanh."""
        out = self.actor(self.obs_norm(obs))
        if not self.stochastic:
            return torch.tanh(out)
        mu, log_std = out.chunk(2, -1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def unit_action(self, obs: Tensor, xi: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(unit-box action, its log-prob): mu(s) and None; SAC: tanh(mu) and None when xi is None, else a
        reparameterised draw with noise xi and log pi."""
        head = self.actor_head(obs)
        if not self.stochastic:
            return head, None
        mu, log_std = head
        return (torch.tanh(mu), None) if xi is None else squashed_gaussian_sample(mu, log_std, xi)

    def q_values(self, obs: Tensor, unit_action: Tensor) -> Tensor:
        """Q_k(s, a) of every critic: (n_critics, N); actions in the unit box."""
        return self.critics(torch.cat([self.obs_norm(obs), unit_action], -1)).squeeze(-1)

    def q(self, obs: Tensor, action: Tensor) -> Tensor:
        """Q_1(s, a) of env actions (N,)."""
        return self.q_values(obs, from_box(action, self.action_low, self.action_high))[0]

    def pi(self, obs: Tensor) -> torch.distributions.Distribution:
        low, high = self.action_low, self.action_high
        if self.stochastic:
            mu, log_std = self.actor_head(obs)
            return SquashedNormal(mu, log_std.exp(), low, high)
        mean = to_box(self.actor_head(obs), low, high)
        return Independent(Normal(mean, (self.noise_std * (high - low) / 2).expand_as(mean), validate_args=False), 1,
                           validate_args=False)

    def forward(self, obs: Tensor) -> torch.distributions.Distribution:
        return self.pi(obs)

    @torch.no_grad()
    def sample(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """(env action, log pi(a | s)): the deterministic action, or a draw of `pi` (its log-prob in env units)."""
        dist = self.pi(obs)
        action = dist.mean if deterministic else dist.sample()
        # inside the Box; SAC's a strictly (tanh(u) rounds to +-1 in float32, where the density is infinite)
        margin = 1e-6 * (self.action_high - self.action_low) if self.stochastic else 0.0
        action = torch.maximum(torch.minimum(action, self.action_high - margin), self.action_low + margin)
        return action, dist.log_prob(action)

    def env_action(self, action: Tensor) -> np.ndarray:
        """What the environment receives: the action clipped to the Box (already inside for the agent's own)."""
        return torch.maximum(torch.minimum(action, self.action_high), self.action_low).cpu().numpy()


def make_continuous_agent(observation_space: gym.Space, action_space: gym.Space, hidden: tuple[int, ...],
                          n_critics: int, stochastic: bool, normalize_obs: bool, noise_std: float = 0.1) -> ContinuousQAgent:
    """The agent of DDPG, TD3 or SAC; refuses spaces it cannot act in."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"the continuous agents take flat Box observations, got {observation_space}")
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(f"DDPG, TD3 and SAC need a flat Box action space (continuous actions), got {action_space}")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(f"DDPG, TD3 and SAC need finite action bounds to rescale tanh outputs to, got {action_space}")
    low = torch.as_tensor(action_space.low, dtype=torch.float32)
    high = torch.as_tensor(action_space.high, dtype=torch.float32)
    return ContinuousQAgent(int(observation_space.shape[0]), low, high, tuple(hidden), n_critics, stochastic,
                            normalize_obs, noise_std)
