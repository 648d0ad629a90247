"""Policies, critics and the four updates of the policy-gradient ladder.

An agent is Spinning Up's actor-critic (Achiam, 2018, "Spinning Up in Deep RL"):
`pi(obs) -> torch.distributions.Distribution` and `v(obs) -> V(s)`, built by
`make_actor_critic` from the action space (Categorical for Discrete, a diagonal
Gaussian for Box). Observation normalisation lives inside the agent, so a saved
state_dict carries its statistics and eval/resume see the same inputs.

The algorithms share one collect loop (rlab/rl/trainer.py) and differ only in the
advantage they compute and the update they run:

    vpg  REINFORCE (Williams, 1992) with the lecture's returns versions 0-3:
         loss = -mean_t A_t log pi(a_t|s_t)
    ac   actor-critic: A_t = G_t - V(s_t) with a Monte-Carlo critic (target G_t),
         or A_t = r_t + gamma V(s_{t+1}) - V(s_t) with a TD critic
    a2c  advantage actor-critic (Mnih et al., 2016, arXiv:1602.01783):
         n-step / GAE advantages, one gradient step per rollout
    ppo  PPO-clip (Schulman et al., 2017, arXiv:1707.06347):
         L = -E[min(rho A, clip(rho, 1-eps, 1+eps) A)] + c_v (V - G)^2 - c_e H[pi]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

ALGOS = ("vpg", "ac", "a2c", "ppo")


class ObsNorm(nn.Module):
    """Running mean/variance of observations: x -> clip((x - mu) / sqrt(var + eps), -c, c).

    Statistics change only through `update` (called by the trainer between
    rollouts); they are buffers, so they travel with the state_dict.
    """

    def __init__(self, dim: int, enabled: bool = True, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.enabled = enabled
        self.clip = clip
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, obs: Tensor) -> None:
        """Merge a batch (.., dim) into the running moments (Chan et al. parallel formula)."""
        if not self.enabled:
            return
        x = obs.reshape(-1, self.mean.shape[0]).to(self.mean.dtype)
        n = x.shape[0]
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        new_mean = self.mean + delta * (n / total).float()
        m2 = self.var * self.count.float() + batch_var * n + delta.pow(2) * (self.count * n / total).float()
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total.float())
        self.count.copy_(total)

    def forward(self, obs: Tensor) -> Tensor:
        if not self.enabled:
            return obs
        return ((obs - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)


def mlp(sizes: list[int], activation: type[nn.Module] = nn.Tanh, out_gain: float = 1.0) -> nn.Sequential:
    """Linear layers with orthogonal init (gain sqrt 2 hidden, `out_gain` last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, activation()]
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """pi(obs) -> distribution over actions, v(obs) -> V(s). `forward` is `pi`.

    obs are raw environment observations (N, obs_dim); normalisation is inside.
    """

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: tuple[int, ...] = (64, 64),
                 normalize_obs: bool = True, log_std_init: float = 0.0,
                 action_low: Tensor | None = None, action_high: Tensor | None = None):
        super().__init__()
        self.discrete = discrete
        self.obs_norm = ObsNorm(obs_dim, enabled=normalize_obs)
        self.actor = mlp([obs_dim, *hidden, action_dim], out_gain=0.01)
        self.critic = mlp([obs_dim, *hidden, 1], out_gain=1.0)
        if not discrete:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
            self.register_buffer("action_low", action_low if action_low is not None else torch.full((action_dim,), -math.inf))
            self.register_buffer("action_high", action_high if action_high is not None else torch.full((action_dim,), math.inf))

    def distribution(self, actor_out: Tensor) -> Distribution:
        if self.discrete:
            return Categorical(logits=actor_out, validate_args=False)
        return Independent(Normal(actor_out, self.log_std.exp().expand_as(actor_out), validate_args=False), 1,
                           validate_args=False)

    def pi(self, obs: Tensor) -> Distribution:
        return self.distribution(self.actor(self.obs_norm(obs)))

    def v(self, obs: Tensor) -> Tensor:
        return self.critic(self.obs_norm(obs)).squeeze(-1)

    def forward(self, obs: Tensor) -> Distribution:
        return self.pi(obs)

    def evaluate_actions(self, obs: Tensor, actions: Tensor, normalized: bool = False,
                         with_entropy: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
        """(log pi(a|s), entropy H[pi(.|s)], V(s)) for a minibatch: the updates' hot path, no Distribution objects.

        `normalized`: obs already went through `obs_norm` (the update normalises a rollout once).
        `with_entropy=False` returns None for the entropy and spares its ops (entropy bonus 0).
        """
        x = obs if normalized else self.obs_norm(obs)
        out = self.actor(x)
        value = self.critic(x).squeeze(-1)
        if self.discrete:
            logp_all = torch.log_softmax(out, -1)
            logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            return logp, -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None, value
        std = self.log_std.exp()
        logp = (-((actions - out) ** 2) / (2 * std**2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum().expand(len(obs)) if with_entropy else None
        return logp, entropy, value

    @torch.no_grad()
    def sample(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """(action, log pi(a|s)) for a batch: the actor alone, with few tensor ops (the collect loop's hot path)."""
        out = self.actor(self.obs_norm(obs))
        if self.discrete:
            logp_all = torch.log_softmax(out, -1)
            # sampling by the Gumbel-max trick, argmax(log pi - log E) with E ~ Exp(1): three times
            # cheaper than torch.multinomial for a few envs, the same distribution
            action = logp_all if deterministic else logp_all - torch.empty_like(logp_all).exponential_().log_()
            action = action.argmax(-1)
            return action, logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        std = self.log_std.exp()
        action = out if deterministic else out + std * torch.randn_like(out)
        logp = (-((action - out) ** 2) / (2 * std**2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return action, logp

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(action, log pi(a|s), V(s)) for a batch."""
        return *self.sample(obs, deterministic), self.v(obs)

    def env_action(self, action: Tensor) -> np.ndarray:
        """What the environment receives: the sampled action, clipped to the Box bounds."""
        if self.discrete:
            return action.cpu().numpy()
        return torch.maximum(torch.minimum(action, self.action_high), self.action_low).cpu().numpy()


def make_actor_critic(observation_space: gym.Space, action_space: gym.Space, hidden: tuple[int, ...] = (64, 64),
                      normalize_obs: bool = True, log_std_init: float = 0.0) -> ActorCritic:
    """Factory: Categorical policy for Discrete actions, Gaussian for Box actions."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"policies here take flat Box observations, got {observation_space}")
    obs_dim = int(observation_space.shape[0])
    if isinstance(action_space, gym.spaces.Discrete):
        return ActorCritic(obs_dim, int(action_space.n), True, tuple(hidden), normalize_obs)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        return ActorCritic(obs_dim, int(action_space.shape[0]), False, tuple(hidden), normalize_obs, log_std_init, low, high)
    raise ValueError(f"unsupported action space {action_space}; allowed: Discrete or a flat Box")


@dataclass
class Batch:
    """One rollout, flattened to (B,) over valid steps. b_ prefix: whole batch."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor


@dataclass
class UpdateSettings:
    """The update's knobs (a slice of TrainConfig after presets are applied)."""

    epochs: int = 1
    minibatch_size: int = 0  # 0: the whole batch
    clip: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    value_epochs: int = 0  # vpg with the value baseline: critic regression steps per rollout
    clip_vf: float | None = None


def _minibatches(n: int, size: int, generator: torch.Generator | None = None):
    perm = torch.randperm(n, generator=generator)
    size = n if size <= 0 else size
    for start in range(0, n, size):
        yield perm[start:start + size]


def _step(agent: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, max_grad_norm: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm and max_grad_norm > 0:
        nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
    optimizer.step()


def _normalized(adv: Tensor, on: bool) -> Tensor:
    return (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8) if on and adv.numel() > 1 else adv


def vpg_update(agent: ActorCritic, optimizer: torch.optim.Optimizer, b: Batch, s: UpdateSettings) -> dict[str, float]:
    """REINFORCE: one gradient step on -mean(A log pi); advantages already carry the baseline.

    With the learned value baseline, the critic then regresses on the returns
    for `value_epochs` minibatch passes (it does not touch the policy loss).
    """
    logp, entropy, _ = agent.evaluate_actions(b.obs, b.actions)
    entropy = entropy.mean()
    policy_loss = -(logp * b.advantages).mean() - s.ent_coef * entropy
    actor_params = [p for n, p in agent.named_parameters() if not n.startswith("critic")]
    optimizer.zero_grad(set_to_none=True)
    policy_loss.backward()
    if s.max_grad_norm > 0:
        nn.utils.clip_grad_norm_(actor_params, s.max_grad_norm)
    optimizer.step()
    out = {"losses/policy": policy_loss.item(), "losses/entropy": entropy.item()}
    if s.value_epochs > 0:
        for _ in range(s.value_epochs):
            for idx in _minibatches(len(b.obs), s.minibatch_size):
                value_loss = F.mse_loss(agent.v(b.obs[idx]), b.returns[idx])
                _step(agent, optimizer, value_loss, s.max_grad_norm)
        out["losses/value"] = value_loss.item()
    return out


def actor_critic_update(agent: ActorCritic, optimizer: torch.optim.Optimizer, b: Batch,
                        s: UpdateSettings) -> dict[str, float]:
    """One joint step: -mean(A log pi) + c_v mean((V(s) - target)^2) - c_e H (ac and a2c).

    `b.returns` is the critic's target (MC return, TD target, or GAE return) and
    `b.advantages` = target - V(s) computed before the step.
    """
    out = {}
    for _ in range(max(1, s.epochs)):
        for idx in _minibatches(len(b.obs), s.minibatch_size):
            logp, entropy, value = agent.evaluate_actions(b.obs[idx], b.actions[idx])
            adv = _normalized(b.advantages[idx], s.norm_adv)
            policy_loss = -(logp * adv).mean()
            value_loss = F.mse_loss(value, b.returns[idx])
            entropy = entropy.mean()
            _step(agent, optimizer, policy_loss + s.vf_coef * value_loss - s.ent_coef * entropy, s.max_grad_norm)
            out = {"losses/policy": policy_loss.item(), "losses/value": value_loss.item(), "losses/entropy": entropy.item()}
    return out


def ppo_update(agent: ActorCritic, optimizer: torch.optim.Optimizer, b: Batch, s: UpdateSettings,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """PPO-clip: `epochs` passes of minibatches over the rollout.

        rho = pi(a|s) / pi_old(a|s)
        L   = -mean(min(rho A, clip(rho, 1 - clip, 1 + clip) A)) + vf_coef (V - G)^2 - ent_coef H

    Advantages are normalised once over the rollout; diagnostics (approx KL,
    clip fraction) are taken on the last epoch only, to keep the loop lean.
    """
    b_adv = _normalized(b.advantages, s.norm_adv)
    b_x = agent.obs_norm(b.obs)  # the statistics stay fixed during the update: normalise once
    bonus = s.ent_coef != 0
    n = len(b.obs)
    whole = s.minibatch_size <= 0 or s.minibatch_size >= n
    for epoch in range(s.epochs):
        batches = [slice(None)] if whole else list(_minibatches(n, s.minibatch_size, generator))
        for idx in batches:
            new_logp, entropy, new_value = agent.evaluate_actions(b_x[idx], b.actions[idx], normalized=True,
                                                                  with_entropy=bonus)
            log_ratio = new_logp - b.logp[idx]
            ratio = log_ratio.exp()
            mb_adv = b_adv[idx]
            policy_loss = -torch.min(ratio * mb_adv, ratio.clamp(1 - s.clip, 1 + s.clip) * mb_adv).mean()
            if s.clip_vf is not None:
                v_clipped = b.values[idx] + (new_value - b.values[idx]).clamp(-s.clip_vf, s.clip_vf)
                value_loss = torch.max((new_value - b.returns[idx]) ** 2, (v_clipped - b.returns[idx]) ** 2).mean()
            else:
                value_loss = F.mse_loss(new_value, b.returns[idx])
            loss = policy_loss + s.vf_coef * value_loss
            if bonus:
                entropy = entropy.mean()
                loss = loss - s.ent_coef * entropy
            _step(agent, optimizer, loss, s.max_grad_norm)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = ((ratio - 1).abs() > s.clip).float().mean()
        if not bonus:  # diagnostic only: the last minibatch's entropy, after the update
            entropy = agent.evaluate_actions(b_x[idx], b.actions[idx], normalized=True)[1].mean()
    return {"losses/policy": policy_loss.item(), "losses/value": value_loss.item(), "losses/entropy": entropy.item(),
            "losses/approx_kl": approx_kl.item(), "losses/clipfrac": clipfrac.item()}
