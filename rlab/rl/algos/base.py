"""What an algorithm declares to the registry, and what the training shell asks of it.

An `Algorithm` is a name, a typed options dataclass (every option it uses, with
its default: the one table of defaults), a label for plots, and a factory for its
`Learner`. The shell (rlab/rl/trainer.py: run folder, checkpoint, resume,
divergence guard, evaluation, logging, progress) drives any `Learner` the same
way: `start` the envs, call `iterate` until the step budget is spent, save
`state_dict()` in checkpoints. On-policy learners collect a rollout, update and
discard it (rlab/rl/onpolicy.py); an off-policy learner steps the envs into a
replay buffer and updates on a schedule, and its `state_dict` carries the buffer,
target networks and exploration state -- the same seam.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol

import gymnasium as gym
import numpy as np
import torch

from rlab.config import check, opt


@dataclass
class Iteration:
    """What one `Learner.iterate` did: env steps taken, losses (namespaced), episodes that ended."""

    env_steps: int
    losses: dict[str, float]
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)


class Agent(Protocol):
    """What evaluation, video and the attack bench need of any trained agent."""

    def pi(self, obs: torch.Tensor) -> torch.distributions.Distribution: ...

    def sample(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]: ...

    def env_action(self, action: torch.Tensor) -> np.ndarray: ...


class Learner(Protocol):
    agent: Any

    def start(self, seed: int, attack: Callable[[torch.Tensor], torch.Tensor] | None) -> None: ...

    def iterate(self, progress_left: float) -> Iteration: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


# options -> envs -> device -> seed -> Learner
LearnerFactory = Callable[[Any, gym.vector.VectorEnv, torch.device, int], Learner]


@dataclass(frozen=True)
class Algorithm:
    """One registry entry."""

    name: str
    description: str
    options: type  # a dataclass of TrainOptions' kind; its field defaults are the algorithm's defaults
    make_learner: LearnerFactory
    make_agent: Callable[[Any, gym.Space, gym.Space], Any]  # options, obs space, action space -> agent (for loading)
    label: Callable[[Any], str] | None = None
    # agent, env id, run folder -> the pictures it wrote there (e.g. a tabular policy on its grid), after training
    figures: Callable[[Any, str, Any], list] | None = None

    def variant(self, options: Any) -> str:
        return self.label(options) if self.label is not None else self.name

    def option_names(self) -> list[str]:
        return [f.name for f in fields(self.options)]


@dataclass
class CommonOptions:
    """Options every algorithm has (each algorithm's dataclass extends this one and may change the defaults)."""

    steps: int = opt(200_000, help="environment steps to train for (all envs together)")
    n_envs: int = opt(8, help="parallel environments")
    lr: float = opt(1e-3, help="Adam learning rate")
    gamma: float = opt(0.99, help="discount factor")
    hidden: list[int] = opt([64, 64], help="hidden layer sizes, e.g. 64,64")
    obs_norm: bool = opt(True, help="running observation normalisation (saved with the checkpoint)")
    max_grad_norm: float = opt(0.5, help="gradient clipping norm (0: off)")

    def __post_init__(self) -> None:
        check(self.steps > 0, f"--steps must be positive, got {self.steps}")
        check(self.n_envs >= 1, f"--n-envs must be >= 1, got {self.n_envs}")
        check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        check(0.0 <= self.gamma <= 1.0, f"--gamma must be in [0, 1], got {self.gamma}")
        check(len(self.hidden) >= 1 and min(self.hidden) >= 1, f"--hidden needs positive layer sizes, got {self.hidden}")
        check(self.max_grad_norm >= 0, f"--max-grad-norm must be >= 0 (0: off), got {self.max_grad_norm}")


@dataclass
class OnPolicyOptions(CommonOptions):
    """Options of the policy-gradient family (vpg, ac, a2c, ppo)."""

    n_steps: int = opt(128, help="steps per env per rollout")
    anneal_lr: bool = opt(False, help="anneal the learning rate linearly to 0 (ppo: the clip range too)")
    log_std_init: float = opt(0.0, help="Gaussian policies (Box actions): initial log std")
    sde_sample_freq: int = opt(0, help="Box actions: gSDE, state-dependent noise whose exploration matrix is drawn "
                                       "again every this many steps (0: off, a state-independent std)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.n_steps >= 1, f"--n-steps must be >= 1, got {self.n_steps}")
        check(self.sde_sample_freq >= 0, f"--sde-sample-freq must be >= 0 (0: off), got {self.sde_sample_freq}")


@dataclass
class MinibatchOptions:
    """Passes and minibatches over a rollout (ac, a2c, ppo)."""

    epochs: int = opt(1, help="passes over each rollout")
    minibatch_size: int = opt(0, help="minibatch size (0: the whole rollout)")
    vf_coef: float = opt(0.5, help="value loss coefficient")
    ent_coef: float = opt(0.0, help="entropy bonus coefficient")
    norm_adv: bool = opt(True, help="standardise the advantages over each minibatch (ppo: once over the rollout)")

    def check_minibatches(self) -> None:
        check(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        check(self.minibatch_size >= 0, f"--minibatch-size must be >= 0 (0: the whole rollout), got {self.minibatch_size}")
        check(self.vf_coef >= 0 and self.ent_coef >= 0, "--vf-coef and --ent-coef must be >= 0")
