"""SAC (Haarnoja et al., 2018, "Soft Actor-Critic Algorithms and Applications"): maximum-entropy RL off policy.

The policy maximises return plus alpha times its entropy. A squashed Gaussian actor
(a = tanh(u), u ~ N(mu(s), sigma(s)^2), log-prob with the tanh correction:
rlab/rl/continuous.py) and twin critics, per minibatch:

    a~, log pi(a~|s) drawn by reparameterisation (a~ = tanh(mu + sigma xi), xi ~ N(0, I))
    alpha loss  = -mean log alpha * (log pi(a~|s) + H_target)       H_target = -dim(A) (automatic temperature)
    y           = G + discount * (min_k Q'_k(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
    critic loss = sum_k mean_i w_i (Q_k(s_i, a_i) - y_i)^2
    actor loss  = mean_i alpha log pi(a~_i|s_i) - min_k Q_k(s_i, a~_i)
    theta'_k   <- tau theta_k + (1 - tau) theta'_k                     (critics only; the actor has no target)

in Stable-Baselines3's order (alpha, critics, actor, targets; the alpha of the step
is the one before its update). Exploration is the policy itself; evaluation plays
tanh(mu(s)). Defaults follow SB3's SAC (net 256x256, lr 3e-4, batch 256, tau 0.005,
alpha automatic from 1, learning starts 100, one gradient step per env step).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from rlab.config import check, opt
from rlab.rl.algos.ddpg import ContinuousOffPolicyOptions
from rlab.rl.continuous import ContinuousQAgent, critic_loss, from_box, frozen, make_continuous_agent, min_q, sac_target, to_box
from rlab.rl.offpolicy import off_policy, polyak_update
from rlab.rl.onpolicy import gradient_step, make_optimizer
from rlab.rl.replay import ReplayBatch


@dataclass
class SACOptions(ContinuousOffPolicyOptions):
    lr: float = opt(3e-4, help="Adam learning rate (actor, critics and temperature)")
    hidden: list[int] = opt([256, 256], help="hidden layer sizes of the actor and each critic, e.g. 256,256")
    alpha: float = opt(0.0, help="fixed entropy temperature alpha (0: tuned automatically toward the target entropy)")
    alpha_init: float = opt(1.0, help="initial alpha of the automatic temperature")
    target_entropy_per_dim: float = opt(-1.0, help="automatic temperature: target entropy = this * dim(A)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.alpha >= 0, f"--alpha must be >= 0 (0: automatic), got {self.alpha}")
        check(self.alpha_init > 0, f"--alpha-init must be > 0, got {self.alpha_init}")
        if self.alpha > 0:
            check((self.alpha_init, self.target_entropy_per_dim) == (1.0, -1.0),
                  "--alpha-init and --target-entropy-per-dim configure the automatic temperature; drop them or "
                  "--alpha")


def make_agent(o: SACOptions, observation_space: gym.Space, action_space: gym.Space) -> ContinuousQAgent:
    return make_continuous_agent(observation_space, action_space, tuple(o.hidden), 2, True, o.obs_norm)


class SAC:
    """The SAC core of the off-policy loop: squashed Gaussian actor, twin critics and their targets, log alpha."""

    def __init__(self, o: SACOptions, observation_space: gym.Space, action_space: gym.Space, device: torch.device,
                 generator: torch.Generator):
        self.o, self.generator, self.device = o, generator, device
        self.agent = make_agent(o, observation_space, action_space).to(device)
        self.target = copy.deepcopy(self.agent).requires_grad_(False)
        self.target.obs_norm = self.agent.obs_norm  # one normaliser: the targets see the online inputs
        self.actor_optimizer = make_optimizer(self.agent.actor.parameters(), o.lr)
        self.critic_optimizer = make_optimizer(self.agent.critics.parameters(), o.lr)
        self.auto_alpha = o.alpha == 0
        self.log_alpha = torch.tensor(math.log(o.alpha if o.alpha > 0 else o.alpha_init), device=device,
                                      requires_grad=self.auto_alpha)
        self.alpha_optimizer = make_optimizer([self.log_alpha], o.lr) if self.auto_alpha else None
        self.target_entropy = o.target_entropy_per_dim * int(action_space.shape[0])

    def noise(self, shape: torch.Size) -> Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    def explore(self, obs: Tensor, env_steps: int) -> Tensor:
        """A draw of pi(. | s), as env actions."""
        with torch.no_grad():
            unit, _ = self.agent.unit_action(obs, self.noise((len(obs), len(self.agent.action_low))))
        return to_box(unit, self.agent.action_low, self.agent.action_high)

    def update(self, batch: ReplayBatch, minibatch_size: int) -> tuple[dict[str, Tensor], Tensor]:
        agent, low, high = self.agent, self.agent.action_low, self.agent.action_high
        sums: dict[str, Tensor] = {}
        td_errors = []
        for start in range(0, len(batch.obs), minibatch_size):
            mb = batch[start:start + minibatch_size]
            action, log_prob = agent.unit_action(mb.obs, self.noise((len(mb), len(low))))
            alpha = self.log_alpha.detach().exp()
            values: dict[str, Tensor] = {}
            if self.auto_alpha:
                alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
                gradient_step([self.log_alpha], self.alpha_optimizer, alpha_loss, 0.0)
                values["losses/alpha"] = alpha_loss.detach()
            with torch.no_grad():
                next_action, next_log_prob = agent.unit_action(mb.next_obs, self.noise((len(mb), len(low))))
                y = sac_target(mb.returns, mb.discounts, self.target.q_values(mb.next_obs, next_action),
                               next_log_prob, alpha)
            q = agent.q_values(mb.obs, from_box(mb.actions, low, high))
            loss = critic_loss(q, y, mb.weights)
            gradient_step(agent.critics.parameters(), self.critic_optimizer, loss, self.o.max_grad_norm)
            with frozen(agent.critics):
                actor_loss = (alpha * log_prob - min_q(agent.q_values(mb.obs, action))).mean()
            gradient_step(agent.actor.parameters(), self.actor_optimizer, actor_loss, self.o.max_grad_norm)
            polyak_update(agent.critics, self.target.critics, self.o.tau)
            td_errors.append((q[0] - y).detach())
            values.update({"losses/critic": loss.detach(), "losses/actor": actor_loss.detach(),
                           "losses/q_values": q[0].detach().mean(), "losses/entropy": -log_prob.detach().mean()})
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
        return sums, torch.cat(td_errors)

    def episodes_ended(self, done: np.ndarray) -> None:
        pass  # the policy's own noise keeps no per-episode state

    def after_env_steps(self, before: int, after: int) -> None:
        pass  # the targets follow gradient steps (Polyak in `update`)

    def log_values(self, env_steps: int) -> dict[str, float]:
        return {"charts/alpha": float(self.log_alpha.detach().exp())}

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target.state_dict(), "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "alpha_optimizer": None if self.alpha_optimizer is None else self.alpha_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        if self.alpha_optimizer is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])


ALGORITHM = off_policy("sac", "SAC: squashed Gaussian actor, twin critics, automatic entropy temperature",
                       SACOptions, SAC, make_agent)
