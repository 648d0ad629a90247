"""A2C: advantage actor-critic (Mnih et al., 2016, arXiv:1602.01783) with GAE advantages.

    A_t = sum_l (gamma lambda)^l delta_{t+l},   delta_t = r_t + gamma V(s_{t+1}) - V(s_t)

(Schulman et al., 2016, arXiv:1506.02438; lambda = 1 is the n-step return of the
rollout), one joint step per rollout with the actor-critic's update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlab.config import check, opt
from rlab.rl import returns as R
from rlab.rl.algos import ac
from rlab.rl.algos.base import MinibatchOptions, OnPolicyOptions
from rlab.rl.onpolicy import Batch, Rollout, on_policy
from rlab.rl.policies import ActorCritic


@dataclass
class A2COptions(MinibatchOptions, OnPolicyOptions):
    steps: int = opt(500_000, help="environment steps to train for (all envs together)")
    n_steps: int = opt(5, help="steps per env per rollout")
    lr: float = opt(7e-4, help="Adam learning rate")
    norm_adv: bool = opt(False, help="standardise the advantages over each minibatch")
    gae_lambda: float = opt(1.0, help="GAE lambda (1: n-step returns)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_minibatches()
        check(0.0 <= self.gae_lambda <= 1.0, f"--gae-lambda must be in [0, 1], got {self.gae_lambda}")


@torch.no_grad()
def advantages(o, agent: ActorCritic, ro: Rollout) -> Batch:
    """GAE(gamma, lambda) advantages and their returns A + V as the critic's target (a2c and ppo)."""
    next_values = R.next_state_values(ro.values, agent.v(ro.last_obs))
    adv, target = R.gae_advantages(ro.rewards, ro.values, ro.terminated, ro.truncated, next_values, o.gamma,
                                   o.gae_lambda)
    return Batch.of(ro, ro.valid(), adv, target)


ALGORITHM = on_policy("a2c", "advantage actor-critic (GAE), one step per rollout", A2COptions, advantages, ac.update)
