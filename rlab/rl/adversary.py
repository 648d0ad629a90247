"""A learned observation adversary: PPO trains a director that a gradient attacker realises (PA-AD).

Zhang et al. (2021, "Robust Reinforcement Learning on State Observations with Learned Optimal
Adversary") show that for a fixed victim pi the strongest observation attacker is the optimal policy of
an MDP of its own: state s, action a perturbation s' in the ball B(s), reward minus the victim's reward
after it acts on s'. Learning s' directly is hard in high dimensions; PA-AD (Sun et al., 2022, "Who Is
the Strongest Enemy? Towards Optimal and Efficient Evasion Attacks in Deep RL") lets the RL "director"
choose only a direction in the victim's *action* space and a gradient "actor" find the s' in the ball
that moves pi that way. For a Categorical victim the director here picks a target action a_adv(s) (a
vertex of the policy simplex; with two actions that is every direction up to scale), and the actor is
targeted PGD toward it (envs.planning_attack.induce); where the victim already takes a_adv, s' = s.

    adversary MDP:  obs s_t (clean),  action a_adv,  victim acts argmax pi(. | PGD_{a_adv}(s_t)),
                    reward -r_t (the victim's reward), same episode ends as the env.

The director is the lab's PPO (rlab.rl.onpolicy.OnPolicyLearner with ppo.update) on that MDP as a vector
env (`VictimUnderAttack`), so it reads like any other training run. `train_adversary` trains one against a
fixed victim at one eps; `LearnedAdversary.perturb` plays it greedily (the "learned" attack of
`rlab bench rl-attack`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from envs.observation_attacks import observation_scale
from envs.planning_attack import induce
from rlab.rl.algos import a2c, ppo
from rlab.rl.environments import make_envs
from rlab.rl.onpolicy import OnPolicyLearner
from rlab.rl.policies import ActorCritic

# the director's PPO: CartPole-v1's preset (zoo) with 16 envs; the adversary's task is as easy as the victim's
DIRECTOR_OPTIONS = dict(n_envs=16, n_steps=32, gae_lambda=0.8, gamma=0.98, epochs=10, lr=1e-3, obs_norm=True,
                        hidden=[64, 64], anneal_lr=True, ent_coef=0.0)


class VictimUnderAttack(gym.vector.VectorWrapper):
    """The adversary's MDP around a vector env: actions are target actions of the victim, rewards are negated.

    Keeps the inner env's next-step autoreset: the step after an episode end resets and ignores the action.
    """

    def __init__(self, envs: gym.vector.VectorEnv, victim, eps: float, scale: Tensor, pgd_steps: int = 10,
                 generator: torch.Generator | None = None):
        super().__init__(envs)
        if not isinstance(envs.single_action_space, gym.spaces.Discrete):
            raise ValueError(f"the learned adversary attacks discrete-action agents; this env has "
                             f"{envs.single_action_space}")
        self.victim, self.eps, self.scale, self.pgd_steps, self.generator = victim, eps, scale, pgd_steps, generator
        self._obs: np.ndarray | None = None

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._obs = np.asarray(obs, dtype=np.float32)
        return obs, info

    def step(self, targets):
        obs = torch.from_numpy(self._obs)
        seen = induce(self.victim, obs, torch.as_tensor(np.asarray(targets), dtype=torch.long), self.eps, self.scale,
                      self.pgd_steps, self.generator)
        with torch.no_grad():
            actions = self.victim(seen).logits.argmax(-1).numpy()
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self._obs = np.asarray(obs, dtype=np.float32)
        return obs, -np.asarray(reward), terminated, truncated, info


@dataclass
class LearnedAdversary:
    """A trained director with its victim and ball: `perturb(obs)` is the attack (greedy director + PGD)."""

    director: ActorCritic
    victim: Any
    eps: float
    scale: Tensor
    pgd_steps: int = 10
    generator: torch.Generator | None = None

    def targets(self, obs: Tensor) -> Tensor:
        with torch.no_grad():
            return self.director.sample(obs, deterministic=True)[0]

    def perturb(self, obs: Tensor) -> Tensor:
        return induce(self.victim, obs, self.targets(obs), self.eps, self.scale.to(obs.device), self.pgd_steps,
                      self.generator)


def train_adversary(victim, env_id: str, eps: float, steps: int = 32_768, seed: int = 0, pgd_steps: int = 10,
                    device: torch.device | str = "cpu", **director_options: Any) -> LearnedAdversary:
    """PPO on the adversary's MDP for `steps` env steps against a fixed `victim` (obs -> Categorical); CPU."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 for a learned adversary, got {eps!r}")
    unknown = set(director_options) - {f for f in ppo.PPOOptions.__dataclass_fields__}
    if unknown:
        raise ValueError(f"unknown director options {sorted(unknown)}; allowed: the fields of ppo.PPOOptions")
    options = ppo.PPOOptions(**{**DIRECTOR_OPTIONS, **director_options, "steps": steps})
    scale = observation_scale(env_id)
    generator = torch.Generator().manual_seed(seed)
    victim = victim.cpu() if hasattr(victim, "cpu") else victim
    envs = VictimUnderAttack(make_envs(env_id, options.n_envs), victim, eps, scale, pgd_steps, generator)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        learner = OnPolicyLearner(options, envs, torch.device("cpu"), seed, a2c.advantages, ppo.update)
        learner.start(seed)
        done = 0
        while done < steps:
            done += learner.iterate(1.0 - done / steps).env_steps
        learner.close()
    learner.agent.eval()
    adversary = LearnedAdversary(learner.agent, victim, eps, scale, pgd_steps, generator)
    return adversary if torch.device(device).type == "cpu" else _on(adversary, torch.device(device))


def _on(adversary: LearnedAdversary, device: torch.device) -> LearnedAdversary:
    adversary.director.to(device)
    adversary.victim.to(device)
    return adversary
