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
in float64 and returns float32 observations), in the same operation order, so
the numbers agree with Gymnasium's to the last bit or two of sin/cos;
`dtype=torch.float32` trades that for speed on accelerators.

Speed on CPU: the state is stored component-major, (4, N) like Gymnasium's
`CartPoleVectorEnv.state`, so every op runs on contiguous rows; the constants
are 0-dim tensors (an op with a Python float pays for wrapping it); the
integrator is one stack-multiply-add; resets draw random numbers only for the
environments that ended. `compile=True` fuses the step into one C++ kernel with
`torch.compile` (Ansel et al., 2024), see `TorchCartPoleVectorEnv`.

`TorchCartPoleVectorEnv` is a `gymnasium.vector.VectorEnv` with next-step
autoreset (as `SyncVectorEnv` by default): the step after an episode ends resets
that sub-environment, ignores its action and returns reward 0, terminated and
truncated False. NumPy arrays in and out by default; `tensors=True` returns
torch tensors on `device` so a GPU training loop never leaves the GPU.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable

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


def _scalar(value: float) -> torch.Tensor:
    """A 0-dim float64 CPU tensor: torch treats it as a Python number (any device, no dtype promotion)."""
    return torch.tensor(value, dtype=torch.float64)


_CONSTANTS = tuple(map(_scalar, (GRAVITY, MASS_POLE, TOTAL_MASS, HALF_LENGTH, POLE_MASS_LENGTH, TAU, 4.0 / 3.0,
                                  X_THRESHOLD, THETA_THRESHOLD)))


def cartpole_step(state: torch.Tensor, force: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler step of the cart-pole. state (4, N) rows (x, x_dot, theta, theta_dot), force (N,) in newtons.

    Returns (next_state (4, N), terminated (N,)) with terminated = |x| > 2.4 or |theta| > 12 deg.
    Pure, and in the operation order of Gymnasium's CartPoleEnv.step, so float64 results agree.
    """
    g, m_p, m_total, half_l, m_p_l, tau, four_thirds, x_threshold, theta_threshold = _CONSTANTS
    x, x_dot, theta, theta_dot = state
    costheta, sintheta = torch.cos(theta), torch.sin(theta)
    temp = (force + m_p_l * theta_dot.square() * sintheta) / m_total
    thetaacc = (g * sintheta - costheta * temp) / (half_l * (four_thirds - m_p * costheta.square() / m_total))
    xacc = temp - m_p_l * thetaacc * costheta / m_total
    next_state = state + tau * torch.stack((x_dot, xacc, theta_dot, thetaacc))
    abs_x, abs_theta = next_state[0::2].abs()
    terminated = (abs_x > x_threshold) | (abs_theta > theta_threshold)
    return next_state, terminated


def advance(state: torch.Tensor, force: torch.Tensor, steps: torch.Tensor, ended: torch.Tensor,
            max_episode_steps: torch.Tensor):
    """`cartpole_step`, the time limit and next-step autoreset's bookkeeping, pure.

    Environments that `ended` on the previous step are being reset: reward 0, terminated and truncated
    False, steps 0 (the caller redraws their state). Returns (next_state, steps, reward, terminated, truncated).
    """
    next_state, terminated = cartpole_step(state, force)
    kept = ~ended
    steps = (steps + 1) * kept
    return next_state, steps, kept.to(torch.float32), terminated & kept, steps >= max_episode_steps


def compile_or_eager(fn: Callable, example_args: tuple) -> tuple[Callable, float]:
    """`torch.compile(fn)` run once on example_args (compilation is lazy); -> (fn to use, compile seconds).

    Falls back to the eager `fn` with a RuntimeWarning when compiling fails (most often: no C++ compiler
    for Inductor's CPU kernels, or no Triton for CUDA ones).
    """
    start = time.perf_counter()
    try:
        compiled = torch.compile(fn, fullgraph=True, dynamic=False)
        compiled(*example_args)
    except Exception as e:  # noqa: BLE001 - any compiler failure means: step eagerly
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        warnings.warn(f"compile=True: torch.compile of the CartPole step failed ({type(e).__name__}: {first}); "
                      "stepping eagerly instead (same numbers, slower). Inductor needs a C++ compiler "
                      "(gcc/g++ or clang) on CPU and Triton on CUDA.", RuntimeWarning, stacklevel=3)
        return fn, time.perf_counter() - start
    return compiled, time.perf_counter() - start


class TorchCartPoleVectorEnv(VectorEnv):
    """`num_envs` CartPole-v1 copies stepped as one tensor op (Gymnasium 1.x VectorEnv, next-step autoreset).

    Args:
        num_envs: number of sub-environments (>= 1).
        max_episode_steps: truncation limit (CartPole-v1: 500).
        device: where the state lives and the dynamics run ("cpu", "cuda", a torch.device).
        dtype: torch.float64 (default, Gymnasium's numbers up to the last bit of sin/cos) or torch.float32.
        tensors: return torch tensors on `device` instead of NumPy arrays.
        compile: step with `torch.compile` (one fused kernel; compiled at construction, `compile_seconds`
            says how long it took; warns and steps eagerly if it fails). Same operations, but Inductor's
            vectorized sin/cos may round the last bit differently: states agree with the eager step's to
            ~1e-15, not bit for bit. Each distinct num_envs compiles again (shapes are static).

    `state` is (4, num_envs), rows (x, x_dot, theta, theta_dot) as in Gymnasium's CartPoleVectorEnv.
    Action values are checked on CPU only (checking them on an accelerator would wait for it).
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, max_episode_steps: int = MAX_EPISODE_STEPS,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float64,
                 tensors: bool = False, compile: bool = False, render_mode: str | None = None):
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
        self.steps = torch.zeros(self.num_envs, dtype=torch.int32, device=self.device)  # int32: faster on CPU
        self.prev_done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self._forces = torch.tensor([-FORCE_MAG, FORCE_MAG], dtype=dtype, device=self.device)  # action 0, 1
        self._max_steps = torch.tensor(self.max_episode_steps, dtype=torch.int32)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(int(np.random.SeedSequence().generate_state(1)[0]))
        self._advance, self.compile_seconds = advance, 0.0
        if compile:
            example = (torch.zeros((4, self.num_envs), dtype=dtype, device=self.device), self._forces[self.steps],
                       self.steps, self.prev_done, self._max_steps)
            self._advance, self.compile_seconds = compile_or_eager(advance, example)
        self.compiled = self._advance is not advance
        # an accelerator never waits: resets by mask with a full draw; on CPU, asking "any ended?" is free
        self.resets_by_mask = self.device.type != "cpu"

    def _uniform_states(self, n: int) -> torch.Tensor:
        states = torch.empty((4, n), dtype=self.dtype, device=self.device)
        return states.uniform_(self.low, self.high, generator=self._generator)

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
        self.state = self._uniform_states(self.num_envs)
        self.steps.zero_()
        self.prev_done.zero_()
        return self._observations(), {}

    def _force(self, actions: Any) -> torch.Tensor:
        """Actions (N,) in {0, 1} -> force (N,) in {-10, +10} newtons, on `device`."""
        if isinstance(actions, torch.Tensor):
            if actions.shape != (self.num_envs,) or actions.dtype.is_floating_point or actions.dtype == torch.bool:
                raise ValueError(f"actions must be integers of shape ({self.num_envs},) in {{0, 1}}, "
                                 f"got dtype {actions.dtype} shape {tuple(actions.shape)}")
            a = actions.to(self.device)
        else:
            actions = np.asarray(actions)
            if actions.dtype.kind not in "iu" or actions.shape != (self.num_envs,):
                raise ValueError(f"actions must be integers of shape ({self.num_envs},) in {{0, 1}}, "
                                 f"got dtype {actions.dtype} shape {actions.shape}")
            a = torch.from_numpy(actions).to(self.device)
        if a.dtype not in (torch.int64, torch.int32):
            a = a.long()
        if self.device.type != "cpu":
            return torch.where(a == 1, self._forces[1], self._forces[0])
        try:
            return self._forces.index_select(0, a)
        except IndexError:
            raise ValueError(f"actions must be 0 (push left) or 1 (push right), "
                             f"got values {torch.unique(a)[:5].tolist()}") from None

    def step(self, actions: Any):
        """Step all sub-environments; those that ended on the previous step are reset instead."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        force = self._force(actions)
        ended = self.prev_done
        self.state, self.steps, reward, terminated, truncated = self._advance(
            self.state, force, self.steps, ended, self._max_steps)
        if self.resets_by_mask:
            self.state = torch.where(ended, self._uniform_states(self.num_envs), self.state)
        elif ended.any():  # draw only for the envs that ended
            (i,) = ended.nonzero(as_tuple=True)
            self.state[:, i] = self._uniform_states(len(i))
        self.prev_done = terminated | truncated
        return self._observations(), self._out(reward), self._out(terminated), self._out(truncated), {}

    def _observations(self):
        """float32 (N, 4) observations, the transpose of the state as in Gymnasium (column-major)."""
        if not self.tensors and self.device.type == "cpu":
            return self.state.numpy().T.astype(np.float32)
        return self._out(self.state.T.to(torch.float32))

    def _out(self, t: torch.Tensor):
        return t if self.tensors else t.cpu().numpy()

    def __repr__(self) -> str:
        compiled = ", compiled" if self.compiled else ""
        return f"TorchCartPoleVectorEnv(num_envs={self.num_envs}, device={self.device}, dtype={self.dtype}{compiled})"
