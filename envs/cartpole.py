"""CartPole-v1 for thousands of environments at once, as one torch tensor program.

The cart-pole of Barto, Sutton and Anderson (1983), with exactly the constants,
Euler integration, termination and time limit of Gymnasium's CartPole-v1
(`gymnasium/envs/classic_control/cartpole.py`): for force F = +-10 N,

    temp      = (F + m_p l theta_dot^2 sin theta) / (m_c + m_p)
    theta_acc = (g sin theta - cos theta * temp) / (l (4/3 - m_p cos^2 theta / (m_c + m_p)))
    x_acc     = temp - m_p l theta_acc cos theta / (m_c + m_p)
    x <- x + tau x_dot,  x_dot <- x_dot + tau x_acc,
    theta <- theta + tau theta_dot,  theta_dot <- theta_dot + tau theta_acc

terminated when |x| > 2.4 or |theta| > 12 degrees, truncated after 500 steps,
reward 1 per step. The state is kept in float64 like Gymnasium's (NumPy computes
in float64 and returns float32 observations); `dtype=torch.float32` trades that
bit-exactness for speed on accelerators.

`TorchCartPoleVectorEnv` is a `gymnasium.vector.VectorEnv` with next-step
autoreset (as `SyncVectorEnv` by default): the step after an episode ends resets
that sub-environment, ignores its action and returns reward 0, terminated and
truncated False. NumPy arrays in and out by default; `tensors=True` returns
torch tensors on `device` so a GPU training loop never leaves the GPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_POLE + MASS_CART
HALF_LENGTH = 0.5
POLE_MASS_LENGTH = MASS_POLE * HALF_LENGTH
FORCE_MAG = 10.0
TAU = 0.02
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
MAX_EPISODE_STEPS = 500
OBSERVATION_HIGH = np.array([X_THRESHOLD * 2, np.inf, THETA_THRESHOLD * 2, np.inf], dtype=np.float32)


def cartpole_step(state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler step of the cart-pole. state (N, 4) = (x, x_dot, theta, theta_dot), action (N,) in {0, 1}.

    Returns (next_state, terminated) with terminated = |x| > 2.4 or |theta| > 12 deg.
    Same operation order as Gymnasium's CartPoleEnv.step, so float64 results agree.
    """
    x, x_dot, theta, theta_dot = state.unbind(1)
    force = action.to(state.dtype).mul_(2 * FORCE_MAG).sub_(FORCE_MAG)
    costheta = torch.cos(theta)
    sintheta = torch.sin(theta)
    temp = (force + POLE_MASS_LENGTH * theta_dot.square() * sintheta) / TOTAL_MASS
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * costheta.square() / TOTAL_MASS))
    xacc = temp - POLE_MASS_LENGTH * thetaacc * costheta / TOTAL_MASS
    next_state = torch.stack((x + TAU * x_dot, x_dot + TAU * xacc, theta + TAU * theta_dot, theta_dot + TAU * thetaacc), 1)
    terminated = (next_state[:, 0].abs() > X_THRESHOLD) | (next_state[:, 2].abs() > THETA_THRESHOLD)
    return next_state, terminated


class TorchCartPoleVectorEnv(VectorEnv):
    """`num_envs` CartPole-v1 copies stepped as one tensor op (Gymnasium 1.x VectorEnv, next-step autoreset).

    Args:
        num_envs: number of sub-environments (>= 1).
        max_episode_steps: truncation limit (CartPole-v1: 500).
        device: where the state lives and the dynamics run ("cpu", "cuda", a torch.device).
        dtype: torch.float64 (default, matches Gymnasium bit for bit) or torch.float32.
        tensors: return torch tensors on `device` instead of NumPy arrays.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, max_episode_steps: int = MAX_EPISODE_STEPS,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float64,
                 tensors: bool = False, render_mode: str | None = None):
        if not isinstance(num_envs, (int, np.integer)) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be a positive integer, got {max_episode_steps!r}")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported by the batched CartPole; "
                             "render with gymnasium.make('CartPole-v1', render_mode='rgb_array')")
        self.num_envs = int(num_envs)
        self.max_episode_steps = int(max_episode_steps)
        self.device = torch.device(device)
        self.dtype = dtype
        self.tensors = bool(tensors)
        self.render_mode = None
        self.single_action_space = spaces.Discrete(2)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = spaces.Box(-OBSERVATION_HIGH, OBSERVATION_HIGH, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.low, self.high = -0.05, 0.05
        self.state: torch.Tensor | None = None
        self.steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self.prev_done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(int(np.random.SeedSequence().generate_state(1)[0]))

    def _uniform_states(self) -> torch.Tensor:
        u = torch.rand((self.num_envs, 4), generator=self._generator, device=self.device, dtype=self.dtype)
        return self.low + (self.high - self.low) * u

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset every sub-environment to a state uniform in (low, high), default (-0.05, 0.05)."""
        super().reset(seed=seed)
        if seed is not None:
            if not isinstance(seed, (int, np.integer)):
                raise TypeError(f"seed must be an int or None for the batched CartPole, got {type(seed).__name__}")
            self._generator.manual_seed(int(seed))
        options = options or {}
        self.low, self.high = float(options.get("low", -0.05)), float(options.get("high", 0.05))
        if not self.low <= self.high:
            raise ValueError(f"reset options need low <= high, got low={self.low}, high={self.high}")
        self.state = self._uniform_states()
        self.steps.zero_()
        self.prev_done.zero_()
        return self._out(self.state.to(torch.float32)), {}

    def _actions(self, actions: Any) -> torch.Tensor:
        if not isinstance(actions, torch.Tensor):
            actions = np.asarray(actions)
            if actions.dtype.kind not in "iu" or actions.shape != (self.num_envs,):
                raise ValueError(f"actions must be integers of shape ({self.num_envs},) in {{0, 1}}, "
                                 f"got dtype {actions.dtype} shape {actions.shape}")
            if actions.min() < 0 or actions.max() > 1:
                raise ValueError(f"actions must be 0 (push left) or 1 (push right), got values {np.unique(actions)[:5]}")
            return torch.from_numpy(actions).to(self.device)
        if actions.shape != (self.num_envs,) or actions.dtype.is_floating_point or actions.dtype == torch.bool:
            raise ValueError(f"actions must be integers of shape ({self.num_envs},) in {{0, 1}}, "
                             f"got dtype {actions.dtype} shape {tuple(actions.shape)}")
        return actions.to(self.device)

    def step(self, actions: Any):
        """Step all sub-environments; those that ended on the previous step are reset instead."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        a = self._actions(actions)
        next_state, terminated = cartpole_step(self.state, a)
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps
        reset = self.prev_done
        # On CPU, skip the reset work on steps where no episode ended (asking costs nothing there);
        # on an accelerator always do it, so the step never waits for the device.
        if self.device.type != "cpu" or bool(reset.any()):
            next_state = torch.where(reset[:, None], self._uniform_states(), next_state)
            self.steps.masked_fill_(reset, 0)
            terminated &= ~reset
            truncated &= ~reset
            reward = (~reset).to(torch.float32)
        else:
            reward = torch.ones(self.num_envs, dtype=torch.float32, device=self.device)
        self.state = next_state
        self.prev_done = terminated | truncated
        return (self._out(self.state.to(torch.float32)), self._out(reward), self._out(terminated),
                self._out(truncated), {})

    def _out(self, t: torch.Tensor):
        return t if self.tensors else t.cpu().numpy()

    def __repr__(self) -> str:
        return f"TorchCartPoleVectorEnv(num_envs={self.num_envs}, device={self.device}, dtype={self.dtype})"
