"""The on-policy loop: collect T steps from N envs, compute advantages, update, discard.

Reads like CleanRL's ppo.py (Huang et al., 2022, "CleanRL", JMLR): VPG,
actor-critic, A2C and PPO share `Collector` and `OnPolicyLearner` and differ only
in the two functions their module gives (rlab/rl/algos/): `advantages(options,
agent, rollout) -> Batch` and `update(options, agent, optimizer, batch,
progress_left, generator) -> losses`.

Gymnasium 1.x vector envs autoreset in next-step mode: after an episode ends,
the next `step` only resets that env (reward 0, action ignored). Those reset
steps are masked out of every loss (`returns.valid_step_mask`), and the
observation returned with an episode end is the true final state, so a
time-limit truncation bootstraps from V(final obs) while a termination does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from rlab.rl import returns as R
from rlab.rl.algos.base import Algorithm, Iteration
from rlab.rl.policies import ActorCritic, make_actor_critic


@dataclass
class Rollout:
    """T steps of N envs. obs[t] is what the agent saw at step t; last_obs follows the last step."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    first_is_reset: Tensor
    last_obs: Tensor

    def valid(self) -> Tensor:
        """(T, N) mask of real steps: not the reset step that follows an episode end."""
        return R.valid_step_mask(self.first_is_reset, self.terminated, self.truncated)


@dataclass
class Batch:
    """One rollout, flattened to (B,) over the valid steps; `returns` is the critic's target."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor

    @staticmethod
    def of(ro: Rollout, valid: Tensor, advantages: Tensor, returns: Tensor) -> "Batch":
        return Batch(ro.obs[valid], ro.actions[valid], ro.logp[valid], ro.values[valid], advantages[valid], returns[valid])


class Collector:
    """Steps the vector env with the agent; keeps the env's state across rollouts.

    Episode statistics follow next-step autoreset: a step right after an episode
    end is a reset step and counts for nothing.
    """

    def __init__(self, envs: gym.vector.VectorEnv, agent: ActorCritic, device: torch.device, seed: int,
                 attack: Callable[[Tensor], Tensor] | None = None):
        self.envs, self.agent, self.device, self.attack = envs, agent, device, attack
        obs, _ = envs.reset(seed=seed)
        self.obs = np.asarray(obs, dtype=np.float32)
        self.prev_done = np.zeros(envs.num_envs, dtype=bool)
        self.ep_return = np.zeros(envs.num_envs)
        self.ep_length = np.zeros(envs.num_envs, dtype=np.int64)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []

    def collect(self, n_steps: int) -> Rollout:
        envs, agent, dev = self.envs, self.agent, self.device
        N = envs.num_envs
        obs_buf = np.empty((n_steps, N, *self.obs.shape[1:]), dtype=np.float32)
        rew_buf = np.empty((n_steps, N), dtype=np.float32)
        term_buf = np.empty((n_steps, N), dtype=bool)
        trunc_buf = np.empty((n_steps, N), dtype=bool)
        actions, logps = [], []
        first_is_reset = torch.from_numpy(self.prev_done.copy())
        obs, prev_done = self.obs, self.prev_done
        ep_return, ep_length = self.ep_return, self.ep_length
        agent.reset_noise(N)  # gSDE: fresh exploration matrices per rollout (a no-op otherwise)
        for t in range(n_steps):
            obs_t = torch.from_numpy(obs).to(dev)
            if self.attack is not None:
                obs_t = self.attack(obs_t)
                obs = obs_t.detach().cpu().numpy()
            obs_buf[t] = obs
            action, logp = agent.sample(obs_t)
            actions.append(action)
            logps.append(logp)
            next_obs, reward, terminated, truncated, info = envs.step(agent.env_action(action))
            rew_buf[t], term_buf[t], trunc_buf[t] = reward, terminated, truncated
            real = ~prev_done
            ep_return += info.get("unshaped_reward", reward) * real  # logged in the env's units (PotentialShaping)
            ep_length += real
            prev_done = terminated | truncated
            if prev_done.any():
                self.finished_returns.extend(ep_return[prev_done].tolist())
                self.finished_lengths.extend(ep_length[prev_done].tolist())
                ep_return[prev_done] = 0.0
                ep_length[prev_done] = 0
            obs = np.asarray(next_obs, dtype=np.float32)
        self.obs, self.prev_done = obs, prev_done
        last_obs = torch.from_numpy(obs).to(dev)
        if self.attack is not None:
            last_obs = self.attack(last_obs).detach()
        all_obs = torch.from_numpy(obs_buf).to(dev)
        with torch.no_grad():  # V(s_t) for the whole rollout in one pass: the weights did not change while collecting
            values = agent.v(all_obs)
        return Rollout(all_obs, torch.stack(actions), torch.stack(logps), values,
                       torch.from_numpy(rew_buf).to(dev), torch.from_numpy(term_buf).to(dev),
                       torch.from_numpy(trunc_buf).to(dev), first_is_reset.to(dev), last_obs)

    def pop_episodes(self) -> tuple[list[float], list[int]]:
        out = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return out


# ----------------------------------------------------------------------------- parts the updates share


def minibatches(n: int, size: int, generator: torch.Generator | None = None):
    """Shuffled index minibatches of `size` over n samples (size <= 0: one batch of all)."""
    perm = torch.randperm(n, generator=generator)
    size = n if size <= 0 else size
    for start in range(0, n, size):
        yield perm[start:start + size]


def gradient_step(params, optimizer: torch.optim.Optimizer, loss: Tensor, max_grad_norm: float) -> None:
    """zero_grad, backward, clip the global gradient norm of `params` (0: off), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm > 0:
        nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()


def normalized(adv: Tensor, on: bool = True) -> Tensor:
    """(A - mean A) / (std A + 1e-8): the lab's one advantage normalisation (a no-op when off or for one sample)."""
    return (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8) if on and adv.numel() > 1 else adv


def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """Adam (eps 1e-5 as in PPO's reference code), fused kernels where torch has them."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, eps=1e-5, foreach=True)


# ----------------------------------------------------------------------------- the learner


Advantages = Callable[[Any, ActorCritic, Rollout], Batch]
Update = Callable[[Any, ActorCritic, torch.optim.Optimizer, Batch, float, torch.Generator], dict[str, float]]


def make_agent(options: Any, observation_space: gym.Space, action_space: gym.Space) -> ActorCritic:
    return make_actor_critic(observation_space, action_space, tuple(options.hidden), bool(options.obs_norm),
                             float(options.log_std_init), int(options.sde_sample_freq))


class OnPolicyLearner:
    """Collect a rollout of n_envs x n_steps, compute the algorithm's advantages, run its update, discard."""

    def __init__(self, options: Any, envs: gym.vector.VectorEnv, device: torch.device, seed: int,
                 advantages: Advantages, update: Update):
        self.options, self.envs, self.device = options, envs, device
        self.advantages, self.update = advantages, update
        self.agent = make_agent(options, envs.single_observation_space, envs.single_action_space).to(device)
        self.optimizer = make_optimizer(self.agent.parameters(), options.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.collector: Collector | None = None

    def start(self, seed: int, attack: Callable[[Tensor], Tensor] | None = None) -> None:
        self.collector = Collector(self.envs, self.agent, self.device, seed=seed, attack=attack)

    def iterate(self, progress_left: float) -> Iteration:
        o = self.options
        if o.anneal_lr:
            self.optimizer.param_groups[0]["lr"] = o.lr * progress_left
        rollout = self.collector.collect(o.n_steps)
        batch = self.advantages(o, self.agent, rollout)
        losses = self.update(o, self.agent, self.optimizer, batch, progress_left, self.generator) if len(batch.obs) else {}
        self.agent.obs_norm.update(rollout.obs[rollout.valid()])
        returns, lengths = self.collector.pop_episodes()
        return Iteration(o.n_envs * o.n_steps, losses, returns, lengths)

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def close(self) -> None:
        self.envs.close()


def on_policy(name: str, description: str, options: type, advantages: Advantages, update: Update,
              label: Callable[[Any], str] | None = None) -> Algorithm:
    """The registry entry of a policy-gradient algorithm: its options, advantages and update on the shared loop."""

    def make_learner(opts: Any, envs: gym.vector.VectorEnv, device: torch.device, seed: int) -> OnPolicyLearner:
        return OnPolicyLearner(opts, envs, device, seed, advantages, update)

    return Algorithm(name, description, options, make_learner, make_agent, label)
