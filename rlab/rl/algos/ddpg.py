"""DDPG (Lillicrap et al., 2016, "Continuous control with deep reinforcement learning"): the critic a
deterministic actor climbs.

A Q critic learns from replayed transitions as in DQN; the max over actions,
impossible for continuous ones, is replaced by an actor mu(s) trained to climb
Q (the deterministic policy gradient, Silver et al., 2014):

    y           = G + discount * Q'(s', mu'(s'))              (rlab/rl/continuous.py ddpg_target)
    critic loss = mean_i w_i (Q(s_i, a_i) - y_i)^2
    actor loss  = -mean_i Q(s_i, mu(s_i))                     grad_theta = grad_a Q * grad_theta mu
    theta'     <- tau theta + (1 - tau) theta'                 (Polyak, after each actor step)

Critic and actor losses take one backward and one Adam step (rlab/rl/continuous.py
`joint_step`: the actor's loss reaches the actor only, through frozen critics, so the
gradients are those of two steps; the actor climbs the critic of before this step's
update, where SB3 steps the critic first).

Exploration adds Gaussian or Ornstein-Uhlenbeck noise to mu(s) in the unit box and
clips to it; the env receives the Box image (`to_box`). TD3 (rlab/rl/algos/td3.py)
is this core with its three changes switched on: twin critics, a delayed actor and
target policy smoothing. Defaults follow Stable-Baselines3's DDPG (net 400x300,
lr 1e-3, batch 256, tau 0.005, learning starts 100, one gradient step per env step,
no gradient clipping); presets per env in rlab/rl/presets.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from rlab.config import check, opt
from rlab.rl.continuous import (ContinuousQAgent, OrnsteinUhlenbeckNoise, critic_loss, ddpg_target, from_box, frozen,
                                joint_step, make_continuous_agent, smoothed_target_action, to_box)
from rlab.rl.offpolicy import OffPolicyOptions, off_policy, polyak_update
from rlab.rl.onpolicy import make_optimizer
from rlab.rl.replay import ReplayBatch

ACTION_NOISES = ("normal", "ornstein-uhlenbeck")


@dataclass
class ContinuousOffPolicyOptions(OffPolicyOptions):
    """Defaults shared by DDPG, TD3 and SAC (Stable-Baselines3's)."""

    steps: int = opt(100_000, help="environment steps to train for (all envs together)")
    hidden: list[int] = opt([400, 300], help="hidden layer sizes of the actor and each critic, e.g. 400,300")
    max_grad_norm: float = opt(0.0, help="gradient clipping norm (0: off)")
    buffer_size: int = opt(1_000_000, help="replay buffer capacity (transitions, all envs together)")
    batch_size: int = opt(256, help="minibatch size of each gradient step")
    learning_starts: int = opt(100, help="env steps of uniformly random actions before the first update")
    train_freq: int = opt(1, help="update every this many env steps (all envs together)")
    gradient_steps: int = opt(1, help="gradient steps per update")
    tau: float = opt(0.005, help="Polyak target update theta' <- tau theta + (1 - tau) theta'")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0.0 < self.tau <= 1.0, f"--tau must be in (0, 1], got {self.tau}")


@dataclass
class DDPGOptions(ContinuousOffPolicyOptions):
    action_noise: str = opt("normal", help="exploration noise added to mu(s) in the unit box",
                            choices=list(ACTION_NOISES))
    noise_std: float = opt(0.1, help="std of the exploration noise (unit box: the Box's half-range is 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.action_noise in ACTION_NOISES,
              f"--action-noise must be one of {', '.join(ACTION_NOISES)}, got {self.action_noise!r}")
        check(self.noise_std >= 0, f"--noise-std must be >= 0, got {self.noise_std}")


def make_agent(o: DDPGOptions, observation_space: gym.Space, action_space: gym.Space, n_critics: int = 1
               ) -> ContinuousQAgent:
    return make_continuous_agent(observation_space, action_space, tuple(o.hidden), n_critics, False, o.obs_norm,
                                 o.noise_std)


class DeterministicActorCritic:
    """The core of DDPG and TD3 on the off-policy loop. DDPG: one critic, actor every step, no smoothing.

    n_critics = 2, policy_delay = d, target_noise = sigma~, noise_clip = c give TD3's clipped double Q, delayed
    actor (and target) updates every d critic steps, and target policy smoothing.
    """

    def __init__(self, o: DDPGOptions, observation_space: gym.Space, action_space: gym.Space, device: torch.device,
                 generator: torch.Generator, n_critics: int = 1, policy_delay: int = 1, target_noise: float = 0.0,
                 noise_clip: float = 0.0):
        self.o, self.generator = o, generator
        self.policy_delay, self.target_noise, self.noise_clip = policy_delay, target_noise, noise_clip
        self.agent = make_agent(o, observation_space, action_space, n_critics).to(device)
        self.target = copy.deepcopy(self.agent).requires_grad_(False)
        self.target.obs_norm = self.agent.obs_norm  # one normaliser: the targets see the online inputs
        self.optimizer = make_optimizer(self.agent.parameters(), o.lr)  # actor and critics: `joint_step`
        # parameter lists walked once (every gradient step freezes the critics and moves the targets)
        self.critic_params = list(self.agent.critics.parameters())
        self.online_params = [*self.agent.actor.parameters(), *self.critic_params]
        self.target_params = [*self.target.actor.parameters(), *self.target.critics.parameters()]
        self.ou = OrnsteinUhlenbeckNoise((o.n_envs, *action_space.shape), o.noise_std) \
            if o.action_noise == "ornstein-uhlenbeck" else None
        self.critic_updates = 0

    def explore(self, obs: Tensor, env_steps: int) -> Tensor:
        """mu(s) + noise, clipped to the unit box, as env actions."""
        with torch.no_grad():
            mu = self.agent.actor_head(obs).cpu()
        noise = self.ou(self.generator) if self.ou is not None else \
            torch.randn(mu.shape, generator=self.generator) * self.o.noise_std
        unit = (mu + noise).clamp(-1.0, 1.0)
        return to_box(unit.to(obs.device), self.agent.action_low, self.agent.action_high)

    def update(self, batch: ReplayBatch, minibatch_size: int) -> tuple[dict[str, Tensor], Tensor]:
        """One critic step per minibatch, an actor step (and Polyak update of the targets) every policy_delay."""
        agent, target = self.agent, self.target
        low, high = agent.action_low, agent.action_high
        sums: dict[str, Tensor] = {}
        td_errors = []
        for start in range(0, len(batch.obs), minibatch_size):
            mb = batch[start:start + minibatch_size]
            with torch.no_grad():
                next_action = target.actor_head(mb.next_obs)
                if self.target_noise > 0:
                    next_action = smoothed_target_action(next_action, self.target_noise, self.noise_clip, self.generator)
                y = ddpg_target(mb.returns, mb.discounts, target.q_values(mb.next_obs, next_action))
            q = agent.q_values(mb.obs, from_box(mb.actions, low, high))
            loss = critic_loss(q, y, mb.weights)
            values = {"losses/critic": loss.detach(), "losses/q_values": q[0].detach().mean()}
            td_errors.append((q[0] - y).detach())
            self.critic_updates += 1
            actor_step = self.critic_updates % self.policy_delay == 0
            if actor_step:
                with frozen(self.critic_params):
                    actor_loss = -agent.q_values(mb.obs, agent.actor_head(mb.obs))[0].mean()
                values["losses/actor"] = actor_loss.detach() * self.policy_delay  # averages back over all steps
                loss = loss + actor_loss
            joint_step(self.optimizer, loss, (agent.actor, agent.critics), self.o.max_grad_norm)
            if actor_step:
                polyak_update(self.online_params, self.target_params, self.o.tau)
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
        return sums, torch.cat(td_errors)

    def episodes_ended(self, done: np.ndarray) -> None:
        if self.ou is not None:
            self.ou.reset(done)

    def after_env_steps(self, before: int, after: int) -> None:
        pass  # the targets follow gradient steps (Polyak in `update`)

    def log_values(self, env_steps: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target.state_dict(), "optimizer": self.optimizer.state_dict(),
                "critic_updates": self.critic_updates,
                "ou": None if self.ou is None else self.ou.x.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.critic_updates = int(state["critic_updates"])
        if self.ou is not None:
            self.ou.x = state["ou"].clone()


ALGORITHM = off_policy("ddpg", "DDPG: a deterministic actor climbing a Q critic, Polyak targets, Gaussian or OU noise",
                       DDPGOptions, DeterministicActorCritic, make_agent)
