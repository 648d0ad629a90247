"""SA-PPO: PPO with the state-adversarial smoothness regulariser (Zhang et al., 2020, "Robust Deep
Reinforcement Learning against Adversarial Perturbations on State Observations", NeurIPS).

An observation attacker moves s to s + delta inside B(s) = {|delta_i| <= eps * scale_i}; the return lost is
bounded by how far pi(. | s + delta) can move from pi(. | s) (their Theorem 5). SA-PPO adds that distance,
at its worst inside the ball, to PPO's loss:

    L = L_PPO + kappa * E_s [ max_{delta in B(s)} KL( pi(. | s) || pi_theta(. | s + delta) ) ]

with pi(. | s) held fixed (no gradient) as the target the perturbed policy must match. The inner max is
PGD on the KL from a uniform random start (the KL's gradient is 0 at delta = 0): `sa_steps` signed steps
of 2.5 eps / sa_steps, projected on the ball, as the paper's PGD variant (their SGLD variant adds noise).
eps grows linearly from 0 to `sa_eps` over the first `sa_ramp` of training (the paper's eps schedule).
The scale is envs.observation_scale of the env being trained, the ball of `rlab bench rl-attack`.

Known limits: the regulariser bounds how much the attacker can change pi, not what the change costs;
Zhang et al. (2021, ATLA) and Sun et al. (2022, PA-AD) show learned adversaries still find weaknesses in
regularised agents, hence the lab judges them by the worst of all attacks (`rlab bench rl-attack`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch

from rlab.config import check, opt
from rlab.rl.algos import a2c, ppo
from rlab.rl.algos.base import Algorithm
from rlab.rl.onpolicy import Batch, OnPolicyLearner, make_agent
from rlab.rl.policies import ActorCritic


@dataclass
class SAPPOOptions(ppo.PPOOptions):
    kappa: float = opt(0.1, help="weight of the state-adversarial KL regulariser")
    sa_eps: float = opt(0.016, help="regulariser's ball: eps as a fraction of each observation's scale")
    sa_steps: int = opt(5, help="PGD steps of the regulariser's inner max")
    sa_ramp: float = opt(0.5, help="fraction of training over which the regulariser's eps grows from 0")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.kappa >= 0, f"--kappa must be >= 0, got {self.kappa}")
        check(0 < self.sa_eps <= 1, f"--sa-eps must be in (0, 1] (a fraction of each observation's scale), got {self.sa_eps}")
        check(self.sa_steps >= 1, f"--sa-steps must be >= 1, got {self.sa_steps}")
        check(0 <= self.sa_ramp <= 1, f"--sa-ramp must be in [0, 1], got {self.sa_ramp}")


def state_adversarial_kl(agent: ActorCritic, obs: torch.Tensor, radius: torch.Tensor, steps: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """mean over obs of max_{|delta| <= radius} KL(pi(s) || pi_theta(s + delta)), the max by PGD; differentiable
    in the agent's parameters at the maximiser (obs raw, radius (d,) per dimension)."""
    with torch.no_grad():
        target = agent.pi(obs)
    u = torch.rand(obs.shape, generator=generator).to(obs.device)
    delta = (2 * u - 1) * radius
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_kl(target, agent.pi(obs + delta)).sum(), delta)
        delta = (delta + 2.5 / steps * radius * grad.sign()).clamp(-radius, radius)
    return _kl(target, agent.pi(obs + delta.detach())).mean()


def _kl(p, q) -> torch.Tensor:
    """(N,) KL(p || q) of two Categoricals or two diagonal Gaussians (torch's closed forms)."""
    return torch.distributions.kl_divergence(p, q)


def sa_regulariser(o: SAPPOOptions, agent: ActorCritic, progress_left: float, scale: torch.Tensor,
                   generator: torch.Generator):
    """raw minibatch obs -> kappa * the state-adversarial KL at this point of training's eps (0 before the ramp)."""
    progress = 1.0 - progress_left
    eps = o.sa_eps * (min(1.0, progress / o.sa_ramp) if o.sa_ramp > 0 else 1.0)

    def regulariser(obs: torch.Tensor) -> torch.Tensor:
        if o.kappa == 0 or eps == 0:
            return torch.zeros((), device=obs.device)
        return o.kappa * state_adversarial_kl(agent, obs, eps * scale.to(obs.device), o.sa_steps, generator)

    return regulariser


def make_learner(o: SAPPOOptions, envs: gym.vector.VectorEnv, device: torch.device, seed: int) -> OnPolicyLearner:
    """PPO's learner with the regulariser's update; the ball's scale is that of the env being trained."""
    from envs.observation_attacks import observation_scale

    scale = observation_scale(envs.spec.id).to(device)

    def sa_update(options: Any, agent: ActorCritic, optimizer, batch: Batch, progress_left: float, generator):
        return ppo.update(options, agent, optimizer, batch, progress_left, generator,
                          sa_regulariser(options, agent, progress_left, scale, generator))

    return OnPolicyLearner(o, envs, device, seed, a2c.advantages, sa_update)


ALGORITHM = Algorithm("sa-ppo", "PPO with SA-PPO's state-adversarial KL regulariser (Zhang et al., 2020)",
                      SAPPOOptions, make_learner, make_agent)
