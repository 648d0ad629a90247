"""TD3 (Fujimoto et al., 2018, "Addressing Function Approximation Error in Actor-Critic Methods"): DDPG with
three fixes for its overestimated Q.

    clipped double Q      y = G + discount * min(Q'_1, Q'_2)(s', a~)     twin critics, both regress on y
    target smoothing      a~ = clip(mu'(s') + clip(eps, -c, c), -1, 1),  eps ~ N(0, sigma~^2)
    delayed actor         the actor and the targets move once every `policy_delay` critic steps

The loop, the actor loss (-Q_1(s, mu(s))) and the exploration noise are DDPG's
(rlab/rl/algos/ddpg.py `DeterministicActorCritic`); the targets are pure functions in
rlab/rl/continuous.py. Defaults follow Stable-Baselines3's TD3 (policy delay 2,
sigma~ 0.2, c 0.5, net 400x300, lr 1e-3, batch 256, tau 0.005).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch

from rlab.config import check, opt
from rlab.rl.algos import ddpg
from rlab.rl.continuous import ContinuousQAgent
from rlab.rl.offpolicy import off_policy


@dataclass
class TD3Options(ddpg.DDPGOptions):
    policy_delay: int = opt(2, help="critic steps per actor step (and Polyak update of the targets)")
    target_policy_noise: float = opt(0.2, help="std of the target policy smoothing noise (unit box)")
    target_noise_clip: float = opt(0.5, help="the smoothing noise is clipped to +-this (unit box)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.policy_delay >= 1, f"--policy-delay must be >= 1, got {self.policy_delay}")
        check(self.target_policy_noise >= 0 and self.target_noise_clip >= 0,
              "--target-policy-noise and --target-noise-clip must be >= 0")


def make_agent(o: TD3Options, observation_space: gym.Space, action_space: gym.Space) -> ContinuousQAgent:
    return ddpg.make_agent(o, observation_space, action_space, n_critics=2)


def make_core(o: TD3Options, observation_space: gym.Space, action_space: gym.Space, device: torch.device,
              generator: torch.Generator) -> ddpg.DeterministicActorCritic:
    return ddpg.DeterministicActorCritic(o, observation_space, action_space, device, generator, n_critics=2,
                                         policy_delay=o.policy_delay, target_noise=o.target_policy_noise,
                                         noise_clip=o.target_noise_clip)


ALGORITHM = off_policy("td3", "TD3: DDPG with twin critics, a delayed actor and target policy smoothing",
                       TD3Options, make_core, make_agent)
