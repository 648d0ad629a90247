"""Gymnasium environments and wrappers of the lab; importing registers the lab's env ids.

    rlab/TorchCartPole-v1   CartPole-v1 batched in torch (envs.cartpole); make it with
                            gymnasium.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point").
                            gymnasium.make(id) gives Gymnasium's own single CartPole, same dynamics.

Observation attacks on policies (Huang et al., 2017) live in envs.observation_attacks
and as wrappers (AdversarialObservation, RandomObservationNoise) in envs.wrappers.
Depends on gymnasium, numpy, torch and attacks; never on rlab.
"""

from __future__ import annotations

import gymnasium

from envs.cartpole import TorchCartPoleVectorEnv, cartpole_step
from envs.observation_attacks import OBSERVATION_ATTACKS, observation_scale, perturb_observations, uniform_noise
from envs.wrappers import AdversarialObservation, RandomObservationNoise

TORCH_CARTPOLE_ID = "rlab/TorchCartPole-v1"

if TORCH_CARTPOLE_ID not in gymnasium.registry:
    gymnasium.register(
        id=TORCH_CARTPOLE_ID,
        entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
        vector_entry_point="envs.cartpole:TorchCartPoleVectorEnv",
        max_episode_steps=500,
        reward_threshold=475.0,
    )

__all__ = [
    "TORCH_CARTPOLE_ID", "TorchCartPoleVectorEnv", "cartpole_step", "OBSERVATION_ATTACKS", "observation_scale",
    "perturb_observations", "uniform_noise", "AdversarialObservation", "RandomObservationNoise",
]
