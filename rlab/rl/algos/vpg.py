"""VPG: REINFORCE (Williams, 1992) with the lecture's returns versions 0-3 and baselines.

    loss = -mean_t A_t log pi(a_t | s_t),   A_t = G_t - b(s_t)

G_t is the version chosen by --returns (rlab/rl/returns.py): the immediate reward
r_t (v0), the reward-to-go sum_{t'>=t} r_t' (v1), or the discounted reward-to-go
sum_{t'>=t} gamma^(t'-t) r_t' (v2); b is --baseline: none, the batch mean,
standardisation, or a learned V(s) (v3), which then regresses on G for
`value_epochs` passes after the policy step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlab.config import check, opt
from rlab.rl import returns as R
from rlab.rl.algos.base import OnPolicyOptions
from rlab.rl.onpolicy import Batch, Rollout, gradient_step, minibatches, on_policy
from rlab.rl.policies import ActorCritic


@dataclass
class VPGOptions(OnPolicyOptions):
    n_steps: int = opt(512, help="steps per env per rollout")
    lr: float = opt(5e-3, help="Adam learning rate")
    max_grad_norm: float = opt(0.0, help="gradient clipping norm (0: off)")
    returns: str = opt("discounted", help="the lecture's return version", choices=list(R.RETURNS))
    baseline: str = opt("standardize", help="baseline subtracted from the return", choices=list(R.BASELINES))
    value_epochs: int = opt(10, help="with --baseline value: critic passes over each rollout")
    minibatch_size: int = opt(0, help="with --baseline value: critic minibatch size (0: the whole rollout)")
    ent_coef: float = opt(0.0, help="entropy bonus coefficient")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.returns in R.RETURNS, f"--returns {self.returns!r} is not allowed; choose from {', '.join(R.RETURNS)}")
        check(self.baseline in R.BASELINES,
              f"--baseline {self.baseline!r} is not allowed; choose from {', '.join(R.BASELINES)}")
        check(self.value_epochs >= 1, f"--value-epochs must be >= 1, got {self.value_epochs}")
        check(self.minibatch_size >= 0, f"--minibatch-size must be >= 0, got {self.minibatch_size}")


@torch.no_grad()
def advantages(o: VPGOptions, agent: ActorCritic, ro: Rollout) -> Batch:
    """Monte-Carlo sums of the lecture: no bootstrap unless the learned baseline exists."""
    valid = ro.valid()
    next_values = R.next_state_values(ro.values, agent.v(ro.last_obs))
    boot = next_values if o.baseline == "value" else torch.zeros_like(next_values)
    args = (ro.rewards, ro.terminated, ro.truncated)
    if o.returns == "immediate":
        g = R.immediate_rewards(ro.rewards)
    elif o.returns == "reward-to-go":
        g = R.reward_to_go(*args, boot)
    else:
        g = R.discounted_returns(*args, boot, o.gamma)
    if o.baseline != "value" and o.returns != "immediate":  # a sum cut by the rollout's end is not G_t
        valid = valid & R.finished_episode_mask(ro.terminated, ro.truncated)
    return Batch.of(ro, valid, R.subtract_baseline(g, o.baseline, ro.values, valid), g)


def update(o: VPGOptions, agent: ActorCritic, optimizer: torch.optim.Optimizer, b: Batch, progress_left: float,
           generator: torch.Generator) -> dict[str, float]:
    """One gradient step on -mean(A log pi) - c_e H; then, with the value baseline, the critic's regression."""
    logp, entropy, _ = agent.evaluate_actions(b.obs, b.actions)
    entropy = entropy.mean()
    policy_loss = -(logp * b.advantages).mean() - o.ent_coef * entropy
    gradient_step([p for n, p in agent.named_parameters() if not n.startswith("critic")], optimizer, policy_loss,
                  o.max_grad_norm)
    out = {"losses/policy": policy_loss.item(), "losses/entropy": entropy.item()}
    if o.baseline == "value":
        for _ in range(o.value_epochs):
            for idx in minibatches(len(b.obs), o.minibatch_size, generator):
                value_loss = F.mse_loss(agent.v(b.obs[idx]), b.returns[idx])
                gradient_step(agent.parameters(), optimizer, value_loss, o.max_grad_norm)
        out["losses/value"] = value_loss.item()
    return out


ALGORITHM = on_policy("vpg", "REINFORCE with the lecture's returns versions and baselines", VPGOptions, advantages,
                      update, label=lambda o: f"vpg / {o.returns} / {o.baseline} baseline")
