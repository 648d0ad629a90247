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

with one backward and one Adam step for the three losses (`joint_step`: each loss reaches
only its own parameters; alpha, critics and actor all move from the same point, as in the
SAC authors' implementation, where SB3 steps them one after another), then the targets;
the alpha of the step is the one before its update. Exploration is the policy itself; evaluation plays
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
from rlab.rl.continuous import (ContinuousQAgent, critic_loss, from_box, frozen, joint_step, make_continuous_agent,
                                min_q, sac_target, to_box)
from rlab.rl.offpolicy import off_policy, polyak_update
from rlab.rl.onpolicy import make_optimizer
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
        self.auto_alpha = o.alpha == 0
        self.log_alpha = torch.tensor(math.log(o.alpha if o.alpha > 0 else o.alpha_init), device=device,
                                      requires_grad=self.auto_alpha)
        self.critic_params = list(self.agent.critics.parameters())  # walked once, used every gradient step
        self.target_params = list(self.target.critics.parameters())
        # actor, critics and log alpha: one optimizer, one step per minibatch (`joint_step`)
        self.optimizer = make_optimizer([*self.agent.parameters(), *([self.log_alpha] if self.auto_alpha else [])],
                                        o.lr)
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
            with torch.no_grad():
                next_action, next_log_prob = agent.unit_action(mb.next_obs, self.noise((len(mb), len(low))))
                y = sac_target(mb.returns, mb.discounts, self.target.q_values(mb.next_obs, next_action),
                               next_log_prob, alpha)
            q = agent.q_values(mb.obs, from_box(mb.actions, low, high))
            loss = critic_loss(q, y, mb.weights)
            with frozen(self.critic_params):
                actor_loss = (alpha * log_prob - min_q(agent.q_values(mb.obs, action))).mean()
            values = {"losses/critic": loss.detach(), "losses/actor": actor_loss.detach()}
            loss = loss + actor_loss
            if self.auto_alpha:
                alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
                values["losses/alpha"] = alpha_loss.detach()
                loss = loss + alpha_loss
            joint_step(self.optimizer, loss, (agent.actor, agent.critics), self.o.max_grad_norm)
            polyak_update(self.critic_params, self.target_params, self.o.tau)
            td_errors.append((q[0] - y).detach())
            values.update({"losses/q_values": q[0].detach().mean(), "losses/entropy": -log_prob.detach().mean()})
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
        return {"target": self.target.state_dict(), "optimizer": self.optimizer.state_dict(),
                "log_alpha": self.log_alpha.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])


ALGORITHM = off_policy("sac", "SAC: squashed Gaussian actor, twin critics, automatic entropy temperature",
                       SACOptions, SAC, make_agent)
