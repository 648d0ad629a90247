"""Policies and critics: the agent of every policy-gradient algorithm.

An agent is Spinning Up's actor-critic (Achiam, 2018, "Spinning Up in Deep RL"):
`pi(obs) -> torch.distributions.Distribution` and `v(obs) -> V(s)`, built by
`make_actor_critic` from the action space (Categorical for Discrete, a diagonal
Gaussian for Box). Observation normalisation lives inside the agent, so a saved
state_dict carries its statistics and eval/resume see the same inputs.

The algorithms (rlab/rl/algos/) share this agent and the on-policy loop
(rlab/rl/onpolicy.py) and differ only in their advantage and update.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal


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

    Box actions: a Gaussian N(mu(s), sigma^2) whose log std is one free parameter per action dim, or, with
    sde_sample_freq > 0, generalized state-dependent exploration (gSDE; Raffin et al., 2022, "Smooth
    Exploration for Robotic Reinforcement Learning", as in Stable-Baselines3): the noise is
    z(s)^T E, with z(s) the actor's last hidden layer and E ~ N(0, exp(L)^2) a (latent x action) matrix per
    env, drawn at each rollout start and every sde_sample_freq steps. Between draws the noise is a smooth
    function of the state; its marginal is N(mu(s), sigma(s)^2) with sigma_i(s)^2 = sum_j z_j(s)^2 exp(2 L_ji)
    (z detached, as SB3's learn_features=False), which gives log pi and the entropy.
    """

    SDE_EPS = 1e-6  # added to sigma(s)^2 (SB3's epsilon)

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: tuple[int, ...] = (64, 64),
                 normalize_obs: bool = True, log_std_init: float = 0.0,
                 action_low: Tensor | None = None, action_high: Tensor | None = None, sde_sample_freq: int = 0):
        super().__init__()
        self.discrete = discrete
        self.sde_sample_freq = sde_sample_freq
        self.obs_norm = ObsNorm(obs_dim, enabled=normalize_obs)
        self.actor = mlp([obs_dim, *hidden, action_dim], out_gain=0.01)
        self.critic = mlp([obs_dim, *hidden, 1], out_gain=1.0)
        if not discrete:
            shape = (hidden[-1], action_dim) if sde_sample_freq > 0 else (action_dim,)
            self.log_std = nn.Parameter(torch.full(shape, float(log_std_init)))
            self.register_buffer("action_low", action_low if action_low is not None else torch.full((action_dim,), -math.inf))
            self.register_buffer("action_high", action_high if action_high is not None else torch.full((action_dim,), math.inf))
            # gSDE's exploration matrices (n_envs, latent, action_dim) and the steps since they were drawn; drawn
            # again at every rollout start, so they need no checkpoint
            self.sde_matrices: Tensor | None = None
            self.sde_age = 0

    def mean_std(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(mu(s), sigma(s), z(s)) of normalised observations (Box actions); z only with gSDE."""
        if self.sde_sample_freq <= 0:
            mu = self.actor(x)
            return mu, self.log_std.exp().expand_as(mu), None
        z = self.actor[:-1](x)
        var = z.detach().square() @ (2 * self.log_std).exp()
        return self.actor[-1](z), (var + self.SDE_EPS).sqrt(), z

    def reset_noise(self, n_envs: int) -> None:
        """gSDE: draw fresh exploration matrices for n_envs envs (the collector calls it at each rollout start)."""
        if not self.discrete and self.sde_sample_freq > 0:
            self.sde_matrices = torch.randn((n_envs, *self.log_std.shape), device=self.log_std.device) \
                * self.log_std.detach().exp()
            self.sde_age = 0

    def distribution(self, x: Tensor) -> Distribution:
        if self.discrete:
            return Categorical(logits=self.actor(x), validate_args=False)
        mu, std, _ = self.mean_std(x)
        return Independent(Normal(mu, std, validate_args=False), 1, validate_args=False)

    def pi(self, obs: Tensor) -> Distribution:
        return self.distribution(self.obs_norm(obs))

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
        value = self.critic(x).squeeze(-1)
        if self.discrete:
            logp_all = torch.log_softmax(self.actor(x), -1)
            logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            return logp, -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None, value
        if self.sde_sample_freq <= 0:  # one log std per action dim: fewer ops than the general case
            out = self.actor(x)
            std = self.log_std.exp()
            logp = (-((actions - out) ** 2) / (2 * std**2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            entropy = (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum().expand(len(obs)) if with_entropy else None
            return logp, entropy, value
        mu, std, _ = self.mean_std(x)
        log_std = std.log()
        logp = (-((actions - mu) ** 2) / (2 * std**2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1) if with_entropy else None
        return logp, entropy, value

    @torch.no_grad()
    def sample(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """(action, log pi(a|s)) for a batch: the actor alone, with few tensor ops (the collect loop's hot path).
        gSDE: the noise z(s)^T E of each env's matrix (drawn again every sde_sample_freq calls) when the batch is
        one obs per env, else a draw of N(mu(s), sigma(s)^2), its marginal."""
        x = self.obs_norm(obs)
        if self.discrete:
            logp_all = torch.log_softmax(self.actor(x), -1)
            # sampling by the Gumbel-max trick, argmax(log pi - log E) with E ~ Exp(1): three times
            # cheaper than torch.multinomial for a few envs, the same distribution
            action = logp_all if deterministic else logp_all - torch.empty_like(logp_all).exponential_().log_()
            action = action.argmax(-1)
            return action, logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        mu, std, z = self.mean_std(x)
        if deterministic:
            action = mu
        elif z is not None and self.sde_matrices is not None and len(self.sde_matrices) == len(obs):
            if self.sde_age and self.sde_age % self.sde_sample_freq == 0:
                self.reset_noise(len(obs))
            self.sde_age += 1
            action = mu + torch.einsum("nl,nla->na", z, self.sde_matrices)
        else:
            action = mu + std * torch.randn_like(mu)
        logp = (-((action - mu) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
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
                      normalize_obs: bool = True, log_std_init: float = 0.0, sde_sample_freq: int = 0) -> ActorCritic:
    """Factory: Categorical policy for Discrete actions, Gaussian for Box actions."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"policies here take flat Box observations, got {observation_space}")
    obs_dim = int(observation_space.shape[0])
    if isinstance(action_space, gym.spaces.Discrete):
        if sde_sample_freq > 0:
            raise ValueError(f"gSDE (--sde-sample-freq) explores continuous actions; {action_space} is discrete")
        return ActorCritic(obs_dim, int(action_space.n), True, tuple(hidden), normalize_obs)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        return ActorCritic(obs_dim, int(action_space.shape[0]), False, tuple(hidden), normalize_obs, log_std_init, low, high,
                           sde_sample_freq)
    raise ValueError(f"unsupported action space {action_space}; allowed: Discrete or a flat Box")


class QAgent(nn.Module):
    """An agent whose greedy action is argmax_a Q(s, a): subclasses give `q(obs) -> Q(s, .)` (N, n_actions).

    `pi(obs)` is Categorical(logits=Q(s, .)), so Q plays the role of the logits for
    evaluation, video and observation attacks (Huang et al., 2017 attacked DQN
    first), and `sample(deterministic=False)` draws from softmax(Q) (Boltzmann).
    Exploration while training (epsilon-greedy) lives in the learners, not here.
    """

    discrete = True

    def q(self, obs: Tensor) -> Tensor:
        raise NotImplementedError

    def pi(self, obs: Tensor) -> Distribution:
        return Categorical(logits=self.q(obs), validate_args=False)

    def forward(self, obs: Tensor) -> Distribution:
        return self.pi(obs)

    @torch.no_grad()
    def sample(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """(action, log pi(a|s)): argmax Q when deterministic, else a draw from softmax(Q) (Gumbel-max)."""
        logp_all = torch.log_softmax(self.q(obs), -1)
        scores = logp_all if deterministic else logp_all - torch.empty_like(logp_all).exponential_().log_()
        action = scores.argmax(-1)
        return action, logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    def env_action(self, action: Tensor) -> np.ndarray:
        return action.cpu().numpy()


class QNetwork(QAgent):
    """Q(s, .) for Discrete actions from flat observations: the agent of the DQN family (Mnih et al., 2015).

    dueling (Wang et al., 2016): the hidden layers feed two heads, V(s) and A(s, a),
    combined as Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), which keeps them identifiable.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (64, 64), dueling: bool = False,
                 normalize_obs: bool = False):
        super().__init__()
        self.dueling = dueling
        self.obs_norm = ObsNorm(obs_dim, enabled=normalize_obs)
        if dueling:
            self.trunk = nn.Sequential(*mlp([obs_dim, *hidden, 1], nn.ReLU)[:-1])  # hidden layers and their ReLUs
            self.value = mlp([hidden[-1], 1], out_gain=1.0)
            self.advantage = mlp([hidden[-1], n_actions], out_gain=1.0)
        else:
            self.q_net = mlp([obs_dim, *hidden, n_actions], nn.ReLU, out_gain=1.0)

    def q(self, obs: Tensor) -> Tensor:
        """Q(s, .) of raw observations: (N, n_actions)."""
        x = self.obs_norm(obs)
        if not self.dueling:
            return self.q_net(x)
        h = self.trunk(x)
        a = self.advantage(h)
        return self.value(h) + a - a.mean(-1, keepdim=True)


def make_q_network(observation_space: gym.Space, action_space: gym.Space, hidden: tuple[int, ...] = (64, 64),
                   dueling: bool = False, normalize_obs: bool = False) -> QNetwork:
    """Q(s, .) over a Discrete action space from flat Box observations."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"Q-networks here take flat Box observations, got {observation_space}")
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"Q-networks need a Discrete action space (one output per action), got {action_space}")
    return QNetwork(int(observation_space.shape[0]), int(action_space.n), tuple(hidden), dueling, normalize_obs)
