"""DQN (Mnih et al., 2015, "Human-level control through deep reinforcement learning") and its extensions.

The critic that picks the action: learn Q(s, a) by regressing on a bootstrapped
target from replayed transitions, act epsilon-greedily on it.

    y     = G + discount * Q_target(s', a*)           (G, discount: n-step window, rlab/rl/replay.py)
    a*    = argmax_a Q_target(s', a)                  plain DQN
    a*    = argmax_a Q(s', a)                         double DQN (van Hasselt et al., 2016): the online
                                                      network picks, the target network evaluates
    loss  = mean_i w_i * Huber(Q(s_i, a_i) - y_i)     (w: importance weights of prioritized replay, else 1)

with a target network copied from Q every `target_update_interval` env steps
(tau = 1), or moved toward it by Polyak averaging (tau < 1); epsilon falls
linearly from `exploration_initial_eps` to `exploration_final_eps` over the first
`exploration_fraction` of training. Options: dueling heads (Wang et al., 2016,
rlab/rl/policies.py QNetwork), n-step returns and prioritized replay (Schaul et
al., 2016) (rlab/rl/offpolicy.py, rlab/rl/replay.py). Defaults follow
rl-baselines3-zoo's DQN entries for classic control; presets per env in
rlab/rl/presets.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rlab.config import check, opt
from rlab.rl.offpolicy import OffPolicyOptions, linear_schedule, off_policy, polyak_update
from rlab.rl.onpolicy import gradient_step, make_optimizer
from rlab.rl.policies import QNetwork, make_q_network
from rlab.rl.replay import ReplayBatch


@dataclass
class DQNOptions(OffPolicyOptions):
    steps: int = opt(100_000, help="environment steps to train for (all envs together)")
    lr: float = opt(6.3e-4, help="Adam learning rate")
    hidden: list[int] = opt([256, 256], help="hidden layer sizes, e.g. 64,64")
    buffer_size: int = opt(50_000, help="replay buffer capacity (transitions, all envs together)")
    batch_size: int = opt(128, help="minibatch size of each gradient step")
    train_freq: int = opt(4, help="update every this many env steps (all envs together)")
    gradient_steps: int = opt(4, help="gradient steps per update")
    target_update_interval: int = opt(250, help="update the target network every this many env steps")
    tau: float = opt(1.0, help="target update theta' <- tau theta + (1 - tau) theta' (1: hard copy)")
    exploration_fraction: float = opt(0.12, help="fraction of training over which epsilon falls linearly")
    exploration_initial_eps: float = opt(1.0, help="epsilon of epsilon-greedy at the start")
    exploration_final_eps: float = opt(0.1, help="epsilon of epsilon-greedy after the fall")
    double: bool = opt(False, help="double Q-learning: the online network picks a*, the target evaluates it")
    dueling: bool = opt(False, help="dueling heads: Q = V + A - mean A")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.target_update_interval >= 1, f"--target-update-interval must be >= 1, got {self.target_update_interval}")
        check(0.0 < self.tau <= 1.0, f"--tau must be in (0, 1], got {self.tau}")
        check(0.0 <= self.exploration_fraction <= 1.0, f"--exploration-fraction must be in [0, 1], got "
                                                       f"{self.exploration_fraction}")
        check(0.0 <= self.exploration_final_eps <= 1.0 and 0.0 <= self.exploration_initial_eps <= 1.0,
              "--exploration-initial-eps and --exploration-final-eps must be in [0, 1]")


def dqn_target(returns: Tensor, discounts: Tensor, next_q_target: Tensor, next_q_online: Tensor | None = None) -> Tensor:
    """y = G + discount * Q_target(s', a*); a* = argmax Q_target(s', .) (plain) or argmax Q_online(s', .) (double).

    returns, discounts: (B,); next_q_target, next_q_online: (B, n_actions).
    """
    picker = next_q_target if next_q_online is None else next_q_online
    a_star = picker.argmax(-1, keepdim=True)
    return returns + discounts * next_q_target.gather(-1, a_star).squeeze(-1)


def make_agent(o: DQNOptions, observation_space: gym.Space, action_space: gym.Space) -> QNetwork:
    return make_q_network(observation_space, action_space, tuple(o.hidden), o.dueling, o.obs_norm)


class DQN:
    """The DQN core of the off-policy loop: Q-network, target network, Adam, epsilon-greedy."""

    def __init__(self, o: DQNOptions, observation_space: gym.Space, action_space: gym.Space, device: torch.device,
                 generator: torch.Generator):
        self.o, self.generator = o, generator
        self.agent = make_agent(o, observation_space, action_space).to(device)
        self.target = copy.deepcopy(self.agent).requires_grad_(False)
        self.optimizer = make_optimizer(self.agent.parameters(), o.lr)
        self.n_actions = int(action_space.n)

    def epsilon(self, env_steps: int) -> float:
        o = self.o
        return linear_schedule(o.exploration_initial_eps, o.exploration_final_eps, o.exploration_fraction,
                               env_steps / o.steps)

    def explore(self, obs: Tensor, env_steps: int) -> Tensor:
        """Epsilon-greedy, per env: a random action with probability epsilon, else argmax_a Q(s, a)."""
        n = len(obs)
        explore = torch.rand(n, generator=self.generator) < self.epsilon(env_steps)
        actions = torch.randint(self.n_actions, (n,), generator=self.generator)
        if not explore.all():  # Q only where an env acts greedily
            with torch.no_grad():
                greedy = self.agent.q(obs).argmax(-1).cpu()
            actions = torch.where(explore, actions, greedy)
        return actions

    def update(self, batch: ReplayBatch, minibatch_size: int) -> tuple[dict[str, Tensor], Tensor]:
        """One gradient step per consecutive minibatch of `batch`; (summed losses, TD errors of all samples).

        The target network does not move during the call (it follows env steps), so Q_target(s', .) of every
        minibatch comes from one forward pass; double DQN's argmax uses the online network of each step.
        """
        with torch.no_grad():
            next_q_target = self.target.q(batch.next_obs)
        sums: dict[str, Tensor] = {}
        td_errors = []
        for start in range(0, len(batch.obs), minibatch_size):
            mb = slice(start, start + minibatch_size)
            q = self.agent.q(batch.obs[mb]).gather(-1, batch.actions[mb].long().unsqueeze(-1)).squeeze(-1)
            with torch.no_grad():
                y = dqn_target(batch.returns[mb], batch.discounts[mb], next_q_target[mb],
                               self.agent.q(batch.next_obs[mb]) if self.o.double else None)
            loss = (batch.weights[mb] * F.smooth_l1_loss(q, y, reduction="none")).mean()
            gradient_step(self.agent.parameters(), self.optimizer, loss, self.o.max_grad_norm)
            td_errors.append((q - y).detach())
            for name, value in (("losses/td", loss.detach()), ("losses/q_values", q.detach().mean())):
                sums[name] = sums.get(name, 0.0) + value
        return sums, torch.cat(td_errors)

    def episodes_ended(self, done: np.ndarray) -> None:
        pass  # epsilon-greedy keeps no per-episode state

    def after_env_steps(self, before: int, after: int) -> None:
        interval = self.o.target_update_interval
        if after // interval > before // interval:
            polyak_update(self.agent, self.target, self.o.tau)

    def log_values(self, env_steps: int) -> dict[str, float]:
        return {"charts/epsilon": self.epsilon(env_steps)}

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])


def label(o: DQNOptions) -> str:
    """dqn, double-dqn, dueling-double-dqn, ... + n-step, PER: the ladder's names."""
    name = ("dueling-" if o.dueling else "") + ("double-" if o.double else "") + "dqn"
    return name + (f" n={o.n_step}" if o.n_step > 1 else "") + (" PER" if o.prioritized else "")


ALGORITHM = off_policy("dqn", "DQN with double Q, dueling heads, n-step returns and prioritized replay as options",
                       DQNOptions, DQN, make_agent, label)
