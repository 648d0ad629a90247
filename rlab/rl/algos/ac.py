"""Actor-critic: the advantage from a learned critic V(s), Monte-Carlo or TD.

    mc:  A_t = G_t - V(s_t),                        critic target G_t
    td:  A_t = r_t + gamma V(s_{t+1}) - V(s_t),     critic target r_t + gamma V(s_{t+1})

    loss = -mean(A log pi) + c_v mean((V(s) - target)^2) - c_e H[pi]

(the lecture's "critic" rung; A2C in rlab/rl/algos/a2c.py uses the same update
with n-step / GAE advantages). Terminations do not bootstrap; truncations do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlab.config import check, opt
from rlab.rl import returns as R
from rlab.rl.algos.base import MinibatchOptions, OnPolicyOptions
from rlab.rl.onpolicy import Batch, Rollout, gradient_step, minibatches, normalized, on_policy
from rlab.rl.policies import ActorCritic

CRITICS = ("mc", "td")


@dataclass
class ACOptions(MinibatchOptions, OnPolicyOptions):
    critic: str = opt("td", help="Monte-Carlo (G - V) or TD (r + gamma V' - V) critic", choices=list(CRITICS))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_minibatches()
        check(self.critic in CRITICS, f"--critic {self.critic!r} is not allowed; choose from {', '.join(CRITICS)}")


@torch.no_grad()
def advantages(o: ACOptions, agent: ActorCritic, ro: Rollout) -> Batch:
    next_values = R.next_state_values(ro.values, agent.v(ro.last_obs))
    if o.critic == "mc":
        target = R.discounted_returns(ro.rewards, ro.terminated, ro.truncated, next_values, o.gamma)
    else:
        target = R.td_target(ro.rewards, ro.terminated, next_values, o.gamma)
    return Batch.of(ro, ro.valid(), target - ro.values, target)


def update(o, agent: ActorCritic, optimizer: torch.optim.Optimizer, b: Batch, progress_left: float,
           generator: torch.Generator) -> dict[str, float]:
    """`epochs` passes of joint steps on -mean(A log pi) + c_v mean((V - target)^2) - c_e H (ac and a2c).

    `b.returns` is the critic's target and `b.advantages` = target - V(s), computed before the steps.
    """
    out = {}
    for _ in range(o.epochs):
        for idx in minibatches(len(b.obs), o.minibatch_size, generator):
            logp, entropy, value = agent.evaluate_actions(b.obs[idx], b.actions[idx])
            policy_loss = -(logp * normalized(b.advantages[idx], o.norm_adv)).mean()
            value_loss = F.mse_loss(value, b.returns[idx])
            entropy = entropy.mean()
            gradient_step(agent.parameters(), optimizer, policy_loss + o.vf_coef * value_loss - o.ent_coef * entropy,
                          o.max_grad_norm)
            out = {"losses/policy": policy_loss.item(), "losses/value": value_loss.item(), "losses/entropy": entropy.item()}
    return out


ALGORITHM = on_policy("ac", "actor-critic with a Monte-Carlo or TD critic", ACOptions, advantages, update,
                      label=lambda o: f"ac / {o.critic} critic")
