"""Making Gymnasium environments: the one place the RL half turns an env id into envs.

`env_spec` registers the lab's own ids (envs/) and suggests the closest names for
an unknown one; `make_envs` builds a vector env (native when the spec has a vector
entry point, e.g. the batched torch CartPole, else synchronous); `PotentialShaping`
adds a potential-based shaping term to a vector env's rewards (the learned adversary's director).
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from rlab.errors import UserError, unknown_name
from rlab.rl.returns import potential_shaping


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """Gymnasium's spec of `env_id` (the lab's envs registered); unknown ids suggest the closest ones."""
    import envs  # noqa: F401  (registers rlab/... env ids)

    if not isinstance(env_id, str):
        raise TypeError(f"env id must be a string such as 'CartPole-v1', got {type(env_id).__name__}")
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        raise unknown_name("environment", env_id, [k for k in gym.registry if "/" not in k or k.startswith("rlab/")]) from None


def make_envs(env_id: str, num_envs: int, **kwargs: Any) -> gym.vector.VectorEnv:
    """`gymnasium.make_vec` after registering the lab's envs; native vector envs when the spec has one.

    One env of Gymnasium's own ids is made synchronous even where a native vector env
    exists: a step of Gymnasium's vector CartPole costs 2.5x a plain CartPole's at
    N = 1 (the lab's rlab/ ids keep their vector env: that is what they are for).
    """
    spec = env_spec(env_id)
    native = spec.vector_entry_point is not None and (num_envs > 1 or env_id.startswith("rlab/"))
    mode = "vector_entry_point" if native else "sync"
    try:
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **kwargs)
    except (gym.error.DependencyNotInstalled, gym.error.DeprecatedEnv, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"environment {env_id!r} cannot be made here: {first}") from None


def episode_limit(env_id: str) -> int:
    """An upper bound on an episode's length: the spec's time limit (+1 for the autoreset step), else 100,000."""
    return (env_spec(env_id).max_episode_steps or 100_000) + 1


class PotentialShaping(gym.vector.VectorWrapper):
    """A vector env whose rewards carry gamma * Phi(s') - Phi(s) (rlab.rl.returns.potential_shaping).

    Phi is computed on the env's own observations (the true state, whatever an observation attack shows
    the agent), 0 at a terminal state. Keeps next-step autoreset: the reset step after an episode end keeps
    its reward (0) unshaped. `info["unshaped_reward"]` carries the env's reward, which the on-policy collector
    counts in the episode returns it logs, so training curves stay in the env's units.
    """

    def __init__(self, envs: gym.vector.VectorEnv, potential: Callable[[np.ndarray], np.ndarray], gamma: float):
        super().__init__(envs)
        self.potential_of, self.gamma = potential, gamma
        self._potential: np.ndarray | None = None
        self._resetting = np.zeros(envs.num_envs, dtype=bool)

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._potential = self.potential_of(np.asarray(obs, dtype=np.float32))
        self._resetting[:] = False
        return obs, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        terminated = np.asarray(terminated, dtype=bool)
        after = self.potential_of(np.asarray(obs, dtype=np.float32))
        raw = np.asarray(reward, dtype=np.float64)
        shaped = potential_shaping(raw, self._potential, after, terminated, self.gamma)
        self._potential = after
        self._resetting, resetting = terminated | np.asarray(truncated, dtype=bool), self._resetting
        return obs, np.where(resetting, raw, shaped), terminated, truncated, {**info, "unshaped_reward": raw}
