"""Acrobot-v1's physics, batched in torch: what the planning attacker simulates (envs.planning_attack).

The acrobot of Sutton (1996, "Generalization in Reinforcement Learning: Successful Examples Using Sparse
Coarse Coding") with the equations of motion of Sutton & Barto's book (Spong's two-link model, the "book"
variant Gymnasium uses), and exactly the constants, RK4 step, angle wrapping, velocity bounds and termination
of Gymnasium's Acrobot-v1 (`gymnasium/envs/classic_control/acrobot.py`): state (theta1, theta2, dtheta1,
dtheta2), float64; torque -1, 0 or +1 on the joint between the links; one RK4 step of dt = 0.2 s; theta wrapped
to [-pi, pi), |dtheta1| <= 4 pi, |dtheta2| <= 9 pi; terminated once the free end is more than one link length
above the pivot, -cos(theta1) - cos(theta1 + theta2) > 1; reward -1 per step that does not terminate. The
observation is (cos theta1, sin theta1, cos theta2, sin theta2, dtheta1, dtheta2) in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DT = 0.2
M1 = M2 = 1.0  # link masses [kg]
L1 = 1.0  # length of the first link [m]
LC1 = LC2 = 0.5  # positions of the links' centres of mass [m]
I1 = I2 = 1.0  # moments of inertia
G = 9.8
MAX_VEL_1, MAX_VEL_2 = 4 * math.pi, 9 * math.pi
TORQUES = (-1.0, 0.0, 1.0)  # action 0, 1, 2
# mechanical energy hanging at rest and standing straight up at rest (the centres of mass at -+ (LC1, L1 + LC2))
ENERGY_DOWN = -G * (M1 * LC1 + M2 * (L1 + LC2))
ENERGY_UP = -ENERGY_DOWN


def _derivatives(state: Tensor, torque: Tensor) -> Tensor:
    """d/dt of (theta1, theta2, dtheta1, dtheta2), state (N, 4), torque (N,)."""
    theta1, theta2, dtheta1, dtheta2 = state.unbind(-1)
    d1 = M1 * LC1**2 + M2 * (L1**2 + LC2**2 + 2 * L1 * LC2 * torch.cos(theta2)) + I1 + I2
    d2 = M2 * (LC2**2 + L1 * LC2 * torch.cos(theta2)) + I2
    phi2 = M2 * LC2 * G * torch.cos(theta1 + theta2 - math.pi / 2.0)
    phi1 = (-M2 * L1 * LC2 * dtheta2**2 * torch.sin(theta2) - 2 * M2 * L1 * LC2 * dtheta2 * dtheta1 * torch.sin(theta2)
            + (M1 * LC1 + M2 * L1) * G * torch.cos(theta1 - math.pi / 2) + phi2)
    ddtheta2 = ((torque + d2 / d1 * phi1 - M2 * L1 * LC2 * dtheta1**2 * torch.sin(theta2) - phi2)
                / (M2 * LC2**2 + I2 - d2**2 / d1))
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), -1)


def _wrap(angle: Tensor) -> Tensor:
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def acrobot_step(state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """(next state (N, 4), terminated (N,)) after actions (N,) in {0, 1, 2} from state (N, 4) float64."""
    torque = torch.as_tensor(TORQUES, dtype=state.dtype, device=state.device)[actions]
    k1 = _derivatives(state, torque)
    k2 = _derivatives(state + DT / 2 * k1, torque)
    k3 = _derivatives(state + DT / 2 * k2, torque)
    k4 = _derivatives(state + DT * k3, torque)
    ns = state + DT / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    ns = torch.stack((_wrap(ns[:, 0]), _wrap(ns[:, 1]), ns[:, 2].clamp(-MAX_VEL_1, MAX_VEL_1),
                      ns[:, 3].clamp(-MAX_VEL_2, MAX_VEL_2)), -1)
    return ns, -torch.cos(ns[:, 0]) - torch.cos(ns[:, 1] + ns[:, 0]) > 1.0


def acrobot_state(obs: Tensor) -> Tensor:
    """The state (N, 4) float64 behind observations (N, 6): the angles from their cosines and sines."""
    obs = obs.to(torch.float64)
    return torch.stack((torch.atan2(obs[:, 1], obs[:, 0]), torch.atan2(obs[:, 3], obs[:, 2]), obs[:, 4], obs[:, 5]), -1)


def acrobot_observation(state: Tensor) -> Tensor:
    """What the agent sees of states (N, 4): (cos theta1, sin theta1, cos theta2, sin theta2, dtheta1, dtheta2)."""
    theta1, theta2, dtheta1, dtheta2 = state.unbind(-1)
    return torch.stack((torch.cos(theta1), torch.sin(theta1), torch.cos(theta2), torch.sin(theta2), dtheta1,
                        dtheta2), -1).to(torch.float32)


def acrobot_energy(state: Tensor) -> Tensor:
    """Mechanical energy (N,): kinetic 1/2 q_dot^T M(q) q_dot plus the links' potential, ENERGY_DOWN hanging at
    rest; the agent must pump it up towards ENERGY_UP to lift the free end above the bar."""
    theta1, theta2, dtheta1, dtheta2 = state.unbind(-1)
    d1 = M1 * LC1**2 + M2 * (L1**2 + LC2**2 + 2 * L1 * LC2 * torch.cos(theta2)) + I1 + I2
    d2 = M2 * (LC2**2 + L1 * LC2 * torch.cos(theta2)) + I2
    kinetic = 0.5 * (d1 * dtheta1**2 + 2 * d2 * dtheta1 * dtheta2 + (M2 * LC2**2 + I2) * dtheta2**2)
    potential = -G * (M1 * LC1 * torch.cos(theta1) + M2 * (L1 * torch.cos(theta1) + LC2 * torch.cos(theta1 + theta2)))
    return kinetic + potential
