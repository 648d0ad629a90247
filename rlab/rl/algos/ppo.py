"""PPO-clip (Schulman et al., 2017, arXiv:1707.06347) on GAE advantages.

    rho = pi(a|s) / pi_old(a|s)
    L   = -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)] + c_v E[(V(s) - G)^2] - c_e H[pi]

`epochs` passes of shuffled minibatches over each rollout; with --anneal-lr the
learning rate and the clip range eps fall linearly to 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlab.config import check, opt
from rlab.rl.algos import a2c
from rlab.rl.algos.base import MinibatchOptions, OnPolicyOptions
from rlab.rl.onpolicy import Batch, gradient_step, minibatches, normalized, on_policy
from rlab.rl.policies import ActorCritic


@dataclass
class PPOOptions(MinibatchOptions, OnPolicyOptions):
    steps: int = opt(1_000_000, help="environment steps to train for (all envs together)")
    n_steps: int = opt(256, help="steps per env per rollout")
    lr: float = opt(3e-4, help="Adam learning rate")
    anneal_lr: bool = opt(True, help="anneal the learning rate and the clip range linearly to 0")
    epochs: int = opt(10, help="passes over each rollout")
    minibatch_size: int = opt(256, help="minibatch size (0: the whole rollout)")
    gae_lambda: float = opt(0.95, help="GAE lambda")
    clip: float = opt(0.2, help="clip range eps of the probability ratio")
    norm_adv: bool = opt(True, help="standardise the advantages once over each rollout")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_minibatches()
        check(0.0 <= self.gae_lambda <= 1.0, f"--gae-lambda must be in [0, 1], got {self.gae_lambda}")
        check(self.clip > 0, f"--clip must be positive, got {self.clip}")


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip: float) -> torch.Tensor:
    """-mean(min(rho A, clip(rho, 1 - clip, 1 + clip) A)): PPO's policy loss."""
    return -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()


def update(o: PPOOptions, agent: ActorCritic, optimizer: torch.optim.Optimizer, b: Batch, progress_left: float,
           generator: torch.Generator,
           regulariser: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """`epochs` passes of minibatches; diagnostics (approx KL, clip fraction) from the last minibatch only.

    `regulariser` (raw minibatch observations -> scalar loss) is added to every minibatch's loss (SA-PPO's)."""
    clip = o.clip * (progress_left if o.anneal_lr else 1.0)
    b_adv = normalized(b.advantages, o.norm_adv)
    b_x = agent.obs_norm(b.obs)  # the statistics stay fixed during the update: normalise once
    bonus = o.ent_coef != 0
    n = len(b.obs)
    whole = o.minibatch_size <= 0 or o.minibatch_size >= n
    for _ in range(o.epochs):
        for idx in [slice(None)] if whole else list(minibatches(n, o.minibatch_size, generator)):
            new_logp, entropy, new_value = agent.evaluate_actions(b_x[idx], b.actions[idx], normalized=True,
                                                                  with_entropy=bonus)
            log_ratio = new_logp - b.logp[idx]
            ratio = log_ratio.exp()
            policy_loss = clipped_surrogate(ratio, b_adv[idx], clip)
            value_loss = F.mse_loss(new_value, b.returns[idx])
            loss = policy_loss + o.vf_coef * value_loss
            if bonus:
                entropy = entropy.mean()
                loss = loss - o.ent_coef * entropy
            if regulariser is not None:
                extra = regulariser(b.obs[idx])
                loss = loss + extra
            gradient_step(agent.parameters(), optimizer, loss, o.max_grad_norm)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = ((ratio - 1).abs() > clip).float().mean()
        if not bonus:  # diagnostic only: the last minibatch's entropy, after the update
            entropy = agent.evaluate_actions(b_x[idx], b.actions[idx], normalized=True)[1].mean()
    out = {"losses/policy": policy_loss.item(), "losses/value": value_loss.item(), "losses/entropy": entropy.item(),
           "losses/approx_kl": approx_kl.item(), "losses/clipfrac": clipfrac.item()}
    if regulariser is not None:
        out["losses/regulariser"] = extra.item()
    return out


ALGORITHM = on_policy("ppo", "PPO-clip on GAE advantages", PPOOptions, a2c.advantages, update)
