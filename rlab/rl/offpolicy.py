"""The off-policy loop: step the envs with a behaviour policy, store transitions, update on a schedule.

Reads like CleanRL's dqn.py and Stable-Baselines3's `OffPolicyAlgorithm`, with
the collector and the schedule kept apart from the update as in Tianshou: an
algorithm (rlab/rl/algos/dqn.py; DDPG, TD3 and SAC next) supplies an
`OffPolicyCore` -- its agent, its behaviour policy (`explore`), one gradient step
(`update`) and its target-network schedule (`after_env_steps`) -- and
`OffPolicyLearner` does the rest:

    for every vector step:
        a = random action while env_steps < learning_starts, else core.explore(s)
        s', r, terminated, truncated = envs.step(a)
        buffer.add(s, s', a, r, terminated, truncated)      (reset steps dropped: rlab/rl/replay.py)
        core.after_env_steps(...)                            (e.g. copy Q into the target network)
        core.episodes_ended(terminated | truncated)          (where any episode ended: e.g. reset OU noise)
        every train_freq env steps after learning_starts: core.update(gradient_steps minibatches)

Env steps count all envs together (SB3 counts train_freq in vector steps; with
one env, the default here as in SB3's DQN, the two agree). With prioritized
replay the importance-sampling exponent beta rises linearly to 1 over training
and each update's TD errors become the sampled slots' new priorities.

The learner's `state_dict` carries everything a resume needs to continue the same
learning: agent, the core's target networks and optimizers, the replay buffer,
the exploration RNG and the step counters (the shell saves it atomically, and
restores the global RNGs). The envs are not in it: a resumed run starts fresh
episodes, as on-policy runs do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from rlab.config import check, opt
from rlab.rl.algos.base import Algorithm, CommonOptions, Iteration
from rlab.rl.replay import ReplayBatch, ReplayBuffer


@dataclass
class OffPolicyOptions(CommonOptions):
    """Options of the replay-buffer family (dqn; ddpg, td3, sac next)."""

    n_envs: int = opt(1, help="parallel environments")
    obs_norm: bool = opt(False, help="running observation normalisation (saved with the checkpoint)")
    max_grad_norm: float = opt(10.0, help="gradient clipping norm (0: off)")
    buffer_size: int = opt(100_000, help="replay buffer capacity (transitions, all envs together)")
    batch_size: int = opt(64, help="minibatch size of each gradient step")
    learning_starts: int = opt(1000, help="env steps of uniformly random actions before the first update")
    train_freq: int = opt(4, help="update every this many env steps (all envs together)")
    gradient_steps: int = opt(1, help="gradient steps per update")
    n_step: int = opt(1, help="n-step returns: bootstrap after n rewards (1: the one-step TD target)")
    prioritized: bool = opt(False, help="prioritized replay, proportional (Schaul et al., 2016)")
    per_alpha: float = opt(0.6, help="with --prioritized: priority exponent alpha (0: uniform)")
    per_beta: float = opt(0.4, help="with --prioritized: initial importance-sampling exponent beta (annealed to 1)")
    log_every: int = opt(1000, help="env steps between logged rows (and the shell's eval and checkpoint checks)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.buffer_size >= self.n_envs, f"--buffer-size must hold one transition per env, got {self.buffer_size}")
        check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        check(self.learning_starts >= 0, f"--learning-starts must be >= 0, got {self.learning_starts}")
        check(self.train_freq >= 1 and self.gradient_steps >= 1,
              f"--train-freq and --gradient-steps must be >= 1, got {self.train_freq} and {self.gradient_steps}")
        check(self.n_step >= 1, f"--n-step must be >= 1, got {self.n_step}")
        check(self.log_every >= 1, f"--log-every must be >= 1, got {self.log_every}")
        check(0.0 <= self.per_alpha <= 1.0 and 0.0 <= self.per_beta <= 1.0,
              f"--per-alpha and --per-beta must be in [0, 1], got {self.per_alpha} and {self.per_beta}")
        if not self.prioritized:
            check((self.per_alpha, self.per_beta) == (0.6, 0.4),
                  "--per-alpha and --per-beta configure prioritized replay; give --prioritized too, or drop them")


class OffPolicyCore(Protocol):
    """What an off-policy algorithm gives the loop."""

    agent: nn.Module

    def explore(self, obs: Tensor, env_steps: int) -> Tensor: ...  # behaviour policy's actions

    # one gradient step per consecutive minibatch of `batch` (the buffer does not change in between):
    # (losses summed over the steps, TD errors of every sample)
    def update(self, batch: ReplayBatch, minibatch_size: int) -> tuple[dict[str, Tensor], Tensor]: ...

    def after_env_steps(self, before: int, after: int) -> None: ...  # target networks on an env-step schedule

    def episodes_ended(self, done: np.ndarray) -> None: ...  # per env: its episode ended (e.g. reset OU noise)

    def log_values(self, env_steps: int) -> dict[str, float]: ...  # e.g. the exploration rate

    def state_dict(self) -> dict[str, Any]: ...  # target networks, optimizers (the agent is saved by the learner)

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# options, observation space, action space, device, the learner's RNG -> core
CoreFactory = Callable[[Any, gym.Space, gym.Space, torch.device, torch.Generator], OffPolicyCore]


def linear_schedule(start: float, end: float, fraction: float, progress: float) -> float:
    """start -> end linearly over the first `fraction` of training (progress = env_steps / steps), then end."""
    if fraction <= 0 or progress >= fraction:
        return end
    return start + (end - start) * progress / fraction


@torch.no_grad()
def polyak_update(online: nn.Module | list[Tensor], target: nn.Module | list[Tensor], tau: float) -> None:
    """theta' <- tau theta + (1 - tau) theta' for parameters (tau = 1: a hard copy); buffers are copied. Lists of
    tensors (no buffers) spare walking the modules on every gradient step (the continuous agents keep them)."""
    params = online if isinstance(online, list) else list(online.parameters())
    targets = target if isinstance(target, list) else list(target.parameters())
    if tau < 1.0:
        torch._foreach_lerp_(targets, params, tau)  # one fused op for all tensors (off-policy updates call it often)
    else:
        torch._foreach_copy_(targets, params)
    if isinstance(online, nn.Module):
        for b, b_target in zip(online.buffers(), target.buffers()):
            b_target.copy_(b)


def random_actions(space: gym.Space, n: int, generator: torch.Generator) -> Tensor:
    """n uniformly random actions of a Discrete or Box space, from `generator`."""
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(int(space.n), (n,), generator=generator) + int(space.start)
    low, high = torch.as_tensor(space.low, dtype=torch.float32), torch.as_tensor(space.high, dtype=torch.float32)
    return low + (high - low) * torch.rand((n, *space.shape), generator=generator)


class OffPolicyLearner:
    """Steps the envs `log_every` env steps per `iterate`, storing transitions and updating on the schedule."""

    def __init__(self, options: OffPolicyOptions, envs: gym.vector.VectorEnv, device: torch.device, seed: int,
                 make_core: CoreFactory):
        self.options, self.envs, self.device = options, envs, device
        self.generator = torch.Generator().manual_seed(seed)
        obs_space, self.action_space = envs.single_observation_space, envs.single_action_space
        self.core = make_core(options, obs_space, self.action_space, device, self.generator)
        self.agent = self.core.agent
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        gamma = options.gamma
        self.buffer = ReplayBuffer(options.buffer_size, envs.num_envs, obs_space.shape,
                                   () if discrete else self.action_space.shape, np.int64 if discrete else np.float32,
                                   gamma, options.n_step, options.prioritized, options.per_alpha, device=device,
                                   seed=seed + 1)
        # gradient steps due at a train_freq boundary: run before the next env step, so an iteration that ends at
        # the boundary is logged and evaluated before them, as SB3's callbacks see its rollouts
        self.env_steps, self.gradient_steps, self.pending_updates = 0, 0, 0
        self.attack: Callable[[Tensor], Tensor] | None = None

    def start(self, seed: int, attack: Callable[[Tensor], Tensor] | None = None) -> None:
        self.attack = attack
        obs, _ = self.envs.reset(seed=seed)
        self.obs = self._seen(obs)
        n = self.envs.num_envs
        self.prev_done = np.zeros(n, dtype=bool)
        self.ep_return, self.ep_length = np.zeros(n), np.zeros(n, dtype=np.int64)

    def _seen(self, obs: Any) -> np.ndarray:
        """What the agent sees: the observation, or its attacked version under --adv-obs."""
        obs = np.asarray(obs, dtype=np.float32)
        if self.attack is None:
            return obs
        return self.attack(torch.from_numpy(obs).to(self.device)).detach().cpu().numpy()

    def iterate(self, progress_left: float) -> Iteration:
        o, n = self.options, self.envs.num_envs
        stop = min(o.steps, (self.env_steps // o.log_every + 1) * o.log_every)
        start_steps, start_updates = self.env_steps, self.gradient_steps
        returns, lengths, seen = [], [], []
        sums: dict[str, Tensor] = {}

        def train() -> None:
            for name, value in self._train(self.pending_updates).items():
                sums[name] = sums.get(name, 0.0) + value
            self.pending_updates = 0

        while self.env_steps < stop:
            if self.pending_updates:
                train()
            if self.env_steps < o.learning_starts:
                actions = random_actions(self.action_space, n, self.generator)
            else:
                actions = self.core.explore(torch.from_numpy(self.obs).to(self.device), self.env_steps)
            next_obs, reward, terminated, truncated, _ = self.envs.step(self.agent.env_action(actions))
            next_seen = self._seen(next_obs)  # with an episode end: the final observation (next-step autoreset)
            valid = ~self.prev_done  # a step right after an episode end only resets its env
            self.buffer.add(self.obs, next_seen, actions.cpu().numpy(), reward, terminated, truncated, valid)
            if o.obs_norm:
                seen.append(self.obs[valid])
            self.ep_return += reward * valid
            self.ep_length += valid
            self.prev_done = terminated | truncated
            if self.prev_done.any():
                self.core.episodes_ended(self.prev_done)
                returns += self.ep_return[self.prev_done].tolist()
                lengths += self.ep_length[self.prev_done].tolist()
                self.ep_return[self.prev_done], self.ep_length[self.prev_done] = 0.0, 0
            self.obs = next_seen
            before, self.env_steps = self.env_steps, self.env_steps + n
            self.core.after_env_steps(before, self.env_steps)
            updates = self.env_steps // o.train_freq - before // o.train_freq
            if updates and self.env_steps > o.learning_starts:  # run before the next env step (SB3's order)
                self.pending_updates += updates * o.gradient_steps
        if self.pending_updates and self.env_steps >= o.steps:  # the run's last update
            train()
        if seen:
            self.agent.obs_norm.update(torch.from_numpy(np.concatenate(seen)).to(self.device))
        done_updates = self.gradient_steps - start_updates
        losses = {name: float(total) / done_updates for name, total in sums.items()}  # empty when no update ran
        losses.update(self.core.log_values(self.env_steps))
        losses.update({"charts/gradient_steps": float(self.gradient_steps), "charts/buffer_size": float(len(self.buffer))})
        return Iteration(self.env_steps - start_steps, losses, returns, lengths)

    def _train(self, steps: int) -> dict[str, Tensor]:
        """`steps` gradient steps; the sums of their losses. Uniform minibatches are drawn in one go (the buffer does
        not change in between); prioritized ones one by one, each after the last one's new priorities."""
        o = self.options
        self.gradient_steps += steps
        if not o.prioritized:
            return self.core.update(self.buffer.sample(steps * o.batch_size), o.batch_size)[0]
        beta = linear_schedule(o.per_beta, 1.0, 1.0, self.env_steps / o.steps)
        sums: dict[str, Tensor] = {}
        for _ in range(steps):
            batch = self.buffer.sample(o.batch_size, beta)
            losses, td_errors = self.core.update(batch, o.batch_size)
            self.buffer.update_priorities(batch.indices, td_errors)
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value
        return sums

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict(), "core": self.core.state_dict(), "buffer": self.buffer.state_dict(),
                "generator": self.generator.get_state(), "env_steps": self.env_steps,
                "gradient_steps": self.gradient_steps, "pending_updates": self.pending_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.core.load_state_dict(state["core"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        self.env_steps, self.gradient_steps = int(state["env_steps"]), int(state["gradient_steps"])
        self.pending_updates = int(state["pending_updates"])

    def close(self) -> None:
        self.envs.close()


def off_policy(name: str, description: str, options: type, make_core: CoreFactory,
               make_agent: Callable[[Any, gym.Space, gym.Space], Any],
               label: Callable[[Any], str] | None = None) -> Algorithm:
    """The registry entry of an off-policy algorithm: its options and core on the shared loop."""

    def make_learner(opts: Any, envs: gym.vector.VectorEnv, device: torch.device, seed: int) -> OffPolicyLearner:
        return OffPolicyLearner(opts, envs, device, seed, make_core)

    return Algorithm(name, description, options, make_learner, make_agent, label)
