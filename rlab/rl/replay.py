"""The replay buffer of the off-policy algorithms: uniform, or prioritized (Schaul et al., 2016).

Experience replay (Lin, 1992; Mnih et al., 2015): every real transition
(s, a, r, s', terminated, truncated) of every env is stored; updates draw random
minibatches from it. Laid out like Stable-Baselines3's `ReplayBuffer`, with two
details that hand-written buffers often get wrong:

- `next_obs` is stored separately, so the last observation of an episode is its
  true final state (Gymnasium 1.x returns it with the episode end; the reset
  observation arrives one step later), and a time-limit truncation is not a
  terminal state: its target bootstraps from Q(s_final) (SB3's
  `handle_timeout_termination`).
- under next-step autoreset the step after an episode end only resets the env
  (action ignored, reward 0); `add` drops it, so it is never a transition.

Storage is one circular column of `capacity // n_envs` slots per env with its own
write position (columns fill unevenly once reset steps are dropped), so the
n-step window of a sampled slot is the next slots of the same column, cut at an
episode end or at the column's newest slot (`returns.n_step_window`).

Prioritized replay (proportional variant): slot i is drawn with probability
P(i) = p_i^alpha / sum_k p_k^alpha, p_i = |delta_i| + eps (its last TD error;
new slots get the largest priority so far), by stratified sampling over a sum
tree, and its loss is weighted by w_i = (N P(i))^-beta / max_batch w (importance
sampling; beta is annealed to 1 by the learner).

`state_dict()` holds tensors and numbers only (checkpoints load with
`torch.load(weights_only=True)`); it stores the filled slots, so a checkpoint
grows with the buffer up to capacity x (2 obs + action + 3 scalars) x 4 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlab.rl.returns import n_step_window


@dataclass
class ReplayBatch:
    """A minibatch with its n-step targets' parts: y = returns + discounts * Q'(next_obs)."""

    obs: Tensor
    actions: Tensor
    returns: Tensor  # G: discounted reward sum of the m steps used (m <= n)
    discounts: Tensor  # gamma^m (1 - terminated at the last step used)
    next_obs: Tensor  # s_{t+m}
    weights: Tensor  # importance-sampling weights (ones when uniform)
    indices: Tensor  # flat slot ids (slot * n_envs + env), for `update_priorities`

    def __len__(self) -> int:
        return len(self.obs)

    def __getitem__(self, s: slice) -> "ReplayBatch":
        return ReplayBatch(*(getattr(self, f)[s] for f in self.__dataclass_fields__))


class SumTree:
    """A binary tree whose inner nodes hold the sums of their leaves: prefix-sum search in O(log n).

    Leaves are `capacity` (rounded up to a power of two) priorities; node i has
    children 2i and 2i + 1, the root is node 1, leaf j is node size + j.
    """

    def __init__(self, capacity: int):
        self.size = 1 << max(0, int(capacity - 1).bit_length())
        self.nodes = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def leaves(self, index: np.ndarray) -> np.ndarray:
        return self.nodes[self.size + index]

    def set(self, index: np.ndarray, values: np.ndarray) -> None:
        """Set leaves (the last value wins for repeated indices) and recompute the sums above them."""
        node = self.size + np.asarray(index, dtype=np.int64)
        self.nodes[node] = values
        node = np.unique(node // 2)
        while node[0] >= 1:
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]
            if node[0] == 1:
                break
            node = np.unique(node // 2)

    def find(self, prefix: np.ndarray) -> np.ndarray:
        """Leaf j with sum(leaves[:j]) <= prefix < sum(leaves[:j+1]), for each prefix in [0, total): never a 0 leaf."""
        node = np.ones(len(prefix), dtype=np.int64)
        prefix = np.asarray(prefix, dtype=np.float64).copy()
        while node[0] < self.size:
            left = 2 * node
            go_right = (prefix >= self.nodes[left]) & (self.nodes[left + 1] > 0)
            prefix = np.where(go_right, prefix - self.nodes[left], prefix)
            node = np.where(go_right, left + 1, left)
        return node - self.size

    def state_dict(self) -> dict[str, Any]:
        return {"nodes": torch.from_numpy(self.nodes.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        nodes = state["nodes"].numpy()
        if nodes.shape != self.nodes.shape:
            raise ValueError(f"sum tree of {nodes.shape[0] // 2} leaves does not fit one of {self.size}")
        self.nodes[:] = nodes


class ReplayBuffer:
    """Transitions of n_envs envs; `sample` returns n-step minibatches, uniformly or by priority."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")

    def __init__(self, capacity: int, n_envs: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...],
                 action_dtype: type, gamma: float, n_step: int = 1, prioritized: bool = False,
                 alpha: float = 0.6, priority_eps: float = 1e-6, device: torch.device | str = "cpu", seed: int = 0):
        if capacity < n_envs:
            raise ValueError(f"capacity ({capacity}) must hold at least one transition per env ({n_envs})")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        self.slots, self.n_envs = capacity // n_envs, n_envs  # slots per env column
        self.gamma, self.n_step, self.prioritized = gamma, n_step, prioritized
        self.alpha, self.priority_eps = alpha, priority_eps
        self.device = torch.device(device)
        shape = (self.slots, n_envs)
        self.obs = np.zeros((*shape, *obs_shape), dtype=np.float32)
        self.next_obs = np.zeros((*shape, *obs_shape), dtype=np.float32)
        self.actions = np.zeros((*shape, *action_shape), dtype=action_dtype)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.pos = np.zeros(n_envs, dtype=np.int64)  # next slot to write, per env
        self.filled = np.zeros(n_envs, dtype=np.int64)  # slots holding a transition, per env
        self.generator = torch.Generator().manual_seed(seed)
        self.tree = SumTree(self.slots * n_envs) if prioritized else None
        self.max_priority = 1.0  # p^alpha given to new transitions

    def __len__(self) -> int:
        return int(self.filled.sum())

    def add(self, obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray, valid: np.ndarray) -> None:
        """One vector step: row e of each array is env e; rows with valid[e] False (reset steps) are dropped."""
        envs = np.flatnonzero(valid)
        if len(envs) == 0:
            return
        slots = self.pos[envs]
        self.obs[slots, envs] = obs[envs]
        self.next_obs[slots, envs] = next_obs[envs]
        self.actions[slots, envs] = actions[envs]
        self.rewards[slots, envs] = rewards[envs]
        self.terminated[slots, envs] = terminated[envs]
        self.truncated[slots, envs] = truncated[envs]
        if self.tree is not None:
            self.tree.set(slots * self.n_envs + envs, np.full(len(envs), self.max_priority))
        self.pos[envs] = (slots + 1) % self.slots
        self.filled[envs] = np.minimum(self.filled[envs] + 1, self.slots)

    def sample(self, batch_size: int, beta: float = 1.0) -> ReplayBatch:
        """A minibatch: uniform over stored transitions, or by priority with IS weights (exponent beta)."""
        if len(self) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if self.tree is None:
            flat = torch.randint(len(self), (batch_size,), generator=self.generator).numpy()
            ends = np.cumsum(self.filled)  # the k-th stored transition lies in column e: ends[e-1] <= k < ends[e]
            envs = np.searchsorted(ends, flat, side="right")
            slots = flat - (ends[envs] - self.filled[envs])
            weights = torch.ones(batch_size)
        else:
            total = self.tree.total
            u = torch.rand(batch_size, generator=self.generator, dtype=torch.float64).numpy()
            prefix = np.minimum((np.arange(batch_size) + u) * (total / batch_size), np.nextafter(total, 0))
            index = self.tree.find(prefix)  # stratified: one draw in each of batch_size equal segments
            slots, envs = index // self.n_envs, index % self.n_envs
            p = self.tree.leaves(index) / total
            w = (len(self) * p) ** -beta
            weights = torch.as_tensor(w / w.max(), dtype=torch.float32)
        return self._batch(slots, envs, weights)

    def _batch(self, slots: np.ndarray, envs: np.ndarray, weights: Tensor) -> ReplayBatch:
        """Gather the n-step windows starting at (slot, env) and reduce them with `n_step_window`."""
        if self.n_step == 1:
            returns, last = torch.from_numpy(self.rewards[slots, envs]), np.zeros(len(slots), dtype=np.int64)
            discounts = torch.from_numpy(self.gamma * ~self.terminated[slots, envs]).float()
        else:
            window = (slots[:, None] + np.arange(self.n_step)) % self.slots  # (B, n) slots of the same column
            newest = ((self.pos[envs] - 1) % self.slots)[:, None]
            terminated = self.terminated[window, envs[:, None]]
            ended = terminated | self.truncated[window, envs[:, None]] | (window == newest)
            returns, discounts, last = n_step_window(torch.from_numpy(self.rewards[window, envs[:, None]]),
                                                     torch.from_numpy(terminated), torch.from_numpy(ended), self.gamma)
            last = last.numpy()
        last_slot = (slots + last) % self.slots
        dev = self.device
        return ReplayBatch(torch.from_numpy(self.obs[slots, envs]).to(dev),
                           torch.from_numpy(self.actions[slots, envs]).to(dev), returns.to(dev), discounts.to(dev),
                           torch.from_numpy(self.next_obs[last_slot, envs]).to(dev), weights.to(dev),
                           torch.from_numpy(slots * self.n_envs + envs))

    def update_priorities(self, indices: Tensor, td_errors: Tensor) -> None:
        """p_i = |delta_i| + eps for the sampled slots (proportional prioritization)."""
        if self.tree is None:
            raise ValueError("update_priorities needs a prioritized buffer")
        p = (td_errors.detach().abs().double().cpu().numpy() + self.priority_eps) ** self.alpha
        self.tree.set(indices.cpu().numpy(), p)
        self.max_priority = max(self.max_priority, float(p.max()))

    def state_dict(self) -> dict[str, Any]:
        """The filled slots and positions (tensors and numbers only)."""
        n = int(self.filled.max())
        state = {name: torch.from_numpy(getattr(self, name)[:n].copy()) for name in self.FIELDS}
        state.update(pos=torch.from_numpy(self.pos.copy()), filled=torch.from_numpy(self.filled.copy()),
                     generator=self.generator.get_state(), max_priority=self.max_priority)
        if self.tree is not None:
            state["tree"] = self.tree.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = state["obs"].shape[0]
        if n > self.slots or tuple(state["obs"].shape[1:]) != self.obs.shape[1:]:
            raise ValueError(f"a buffer of {n} x {tuple(state['obs'].shape[1:])} slots does not fit one of "
                             f"{self.slots} x {self.obs.shape[1:]}")
        if (self.tree is None) != ("tree" not in state):
            raise ValueError("a prioritized buffer and a uniform one cannot load each other's state")
        for name in self.FIELDS:
            getattr(self, name)[:n] = state[name].numpy()
            getattr(self, name)[n:] = 0
        self.pos[:] = state["pos"].numpy()
        self.filled[:] = state["filled"].numpy()
        self.generator.set_state(state["generator"])
        self.max_priority = float(state["max_priority"])
        if self.tree is not None:
            self.tree.load_state_dict(state["tree"])
