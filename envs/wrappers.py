"""Gymnasium wrappers that perturb what a policy observes (Huang et al., 2017).

    AdversarialObservation(env, policy, eps, method)   s -> FGSM / PGD s' that pushes `policy` off its action
                                                        (or, "pgd-worst", onto the env's worst action)
    RandomObservationNoise(env, eps)                    s -> s + uniform noise in the same ball (the baseline)

Both perturb within |s' - s|_i <= eps * scale_i (scale: envs.observation_scale of the env id), clip
to the observation space so the result is a valid observation, and draw their randomness from a
generator seeded by `reset(seed=...)`, so a seeded episode is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium
import numpy as np
import torch
from torch.distributions import Distribution

from envs.observation_attacks import observation_scale, perturb_observations, worst_action_rule


def _scale_for(env: gymnasium.Env, scale: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    if scale is not None:
        return torch.as_tensor(scale, dtype=torch.float32)
    if env.spec is None:
        raise ValueError("this env has no spec id to look its observation scale up; pass scale=... explicitly")
    return observation_scale(env.spec.id)


def _check_box(env: gymnasium.Env) -> None:
    space = env.observation_space
    if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"observation perturbation needs a flat Box observation space, got {space}")


class _PerturbedObservation(gymnasium.ObservationWrapper):
    """Shared part: eps / scale validation, the seeded generator, clipping back into the space."""

    method = "random"

    def __init__(self, env: gymnasium.Env, eps: float, scale=None, policy=None, steps: int = 10, worst_action=None):
        super().__init__(env)
        self.worst_action = worst_action
        _check_box(env)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not np.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps, self.policy, self.steps = float(eps), policy, steps
        self.scale = _scale_for(env, scale)
        if self.scale.shape != env.observation_space.shape:
            raise ValueError(f"scale must have shape {env.observation_space.shape}, got {tuple(self.scale.shape)}")
        params = list(policy.parameters()) if isinstance(policy, torch.nn.Module) else []
        self.device = params[0].device if params else torch.device("cpu")
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._generator.manual_seed(int(seed))
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32), device=self.device)[None]
        perturbed = perturb_observations(self.policy, obs, self.eps, self.method, self.scale.to(self.device),
                                         steps=self.steps, generator=self._generator, worst_action=self.worst_action)
        space = self.observation_space
        return np.clip(perturbed[0].cpu().numpy(), space.low, space.high).astype(space.dtype)


class AdversarialObservation(_PerturbedObservation, gymnasium.utils.RecordConstructorArgs):
    """Replace each observation by an FGSM / PGD one that pushes `policy` off the action it would take.

    Args:
        env: a Gymnasium env with a flat Box observation space.
        policy: obs (N, d) tensor -> torch.distributions.Distribution (the attacked agent).
        eps: radius as a fraction of each dimension's scale.
        method: "fgsm", "pgd" or "pgd-worst" (PGD targeted at the env's worst action, discrete policies).
        scale: per-dimension scale; default observation_scale(env.spec.id).
        steps: PGD iterations.
        worst_action: target rule of "pgd-worst"; default worst_action_rule(env.spec.id).
    """

    METHODS = ("fgsm", "pgd", "pgd-worst")

    def __init__(self, env: gymnasium.Env, policy: Callable[[torch.Tensor], Distribution], eps: float,
                 method: str = "pgd", scale=None, steps: int = 10, worst_action=None):
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {', '.join(self.METHODS)}, got {method!r}")
        if method == "pgd-worst" and worst_action is None:
            if env.spec is None:
                raise ValueError("this env has no spec id to look its worst action up; pass worst_action=... explicitly")
            worst_action = worst_action_rule(env.spec.id)
        if not callable(policy):
            raise TypeError(f"policy must be callable obs -> distribution, got {type(policy).__name__}")
        gymnasium.utils.RecordConstructorArgs.__init__(self, policy=policy, eps=eps, method=method, scale=scale,
                                                       steps=steps, worst_action=worst_action, _disable_deepcopy=True)
        self.method = method
        _PerturbedObservation.__init__(self, env, eps, scale=scale, policy=policy, steps=steps,
                                       worst_action=worst_action)


class RandomObservationNoise(_PerturbedObservation, gymnasium.utils.RecordConstructorArgs):
    """Add noise uniform in the ball |delta_i| <= eps * scale_i: the baseline for AdversarialObservation."""

    def __init__(self, env: gymnasium.Env, eps: float, scale=None):
        gymnasium.utils.RecordConstructorArgs.__init__(self, eps=eps, scale=scale, _disable_deepcopy=True)
        _PerturbedObservation.__init__(self, env, eps, scale=scale)
