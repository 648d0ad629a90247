"""Tabular TD learning on discrete-state envs (Sutton & Barto, 2018, "Reinforcement Learning: An Introduction", ch. 6).

One table, one update per step, online (no replay):

    td0             V(s)    += alpha [r + gamma V(s')                        - V(s)]     (policy evaluation, §6.1)
    sarsa           Q(s, a) += alpha [r + gamma Q(s', a')                    - Q(s, a)]  (on-policy, §6.4)
    qlearning       Q(s, a) += alpha [r + gamma max_a' Q(s', a')             - Q(s, a)]  (off-policy, §6.5)
    expected-sarsa  Q(s, a) += alpha [r + gamma sum_a' pi(a'|s') Q(s', a')   - Q(s, a)]  (§6.6)

with the bootstrap term dropped when s' is terminal (a time-limit truncation
still bootstraps), a' the epsilon-greedy action actually taken next, and pi the
epsilon-greedy policy. Epsilon falls linearly from `exploration_initial_eps` to
`exploration_final_eps` over the first `exploration_fraction` of the env steps
(equal values: constant epsilon, as in the book). td0 evaluates the uniformly
random policy; its agent then acts greedily on the one-step lookahead
Q(s, a) = sum_s' P(s'|s, a) [r + gamma V(s')] through the env's model (the toy-text
envs expose P), so V, too, picks actions.

Each `iterate` runs `episodes_per_iteration` whole episodes; every episode starts
from a reset seeded by the learner's own RNG, so a resumed run continues exactly
as an uninterrupted one. The table is the checkpoint. The picture written into the
run folder (policy.png: V as colour, the greedy policy as arrows) is drawn by
rlab/rl/grid_plot.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution

from rlab.config import check, opt
from rlab.errors import UserError
from rlab.rl.algos.base import Algorithm, Iteration
from rlab.rl.offpolicy import linear_schedule

METHODS = ("td0", "qlearning", "sarsa", "expected-sarsa")


@dataclass
class TD0Options:
    """Options of tabular TD(0) policy evaluation (no CLI --n-envs: one env, online)."""

    n_envs: ClassVar[int] = 1
    steps: int = opt(100_000, help="environment steps to train for (all envs together)")
    gamma: float = opt(0.99, help="discount factor")
    alpha: float = opt(0.1, help="step size alpha of the TD update")
    episodes_per_iteration: int = opt(10, help="episodes between logged rows (tabular methods)")

    def __post_init__(self) -> None:
        check(self.steps > 0, f"--steps must be positive, got {self.steps}")
        check(0.0 <= self.gamma <= 1.0, f"--gamma must be in [0, 1], got {self.gamma}")
        check(0.0 < self.alpha <= 1.0, f"--alpha must be in (0, 1], got {self.alpha}")
        check(self.episodes_per_iteration >= 1, f"--episodes-per-iteration must be >= 1, got {self.episodes_per_iteration}")


@dataclass
class TabularControlOptions(TD0Options):
    """Options of Q-learning, SARSA and expected SARSA."""

    exploration_fraction: float = opt(0.5, help="fraction of training over which epsilon falls linearly")
    exploration_initial_eps: float = opt(1.0, help="epsilon of epsilon-greedy at the start")
    exploration_final_eps: float = opt(0.05, help="epsilon of epsilon-greedy after the fall")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0.0 <= self.exploration_fraction <= 1.0,
              f"--exploration-fraction must be in [0, 1], got {self.exploration_fraction}")
        check(0.0 <= self.exploration_final_eps <= 1.0 and 0.0 <= self.exploration_initial_eps <= 1.0,
              "--exploration-initial-eps and --exploration-final-eps must be in [0, 1]")


class TabularAgent(nn.Module):
    """Q(s, .) as a table (and V(s) for td0): greedy action argmax_a Q(s, a); pi = Categorical(logits=Q(s, .)).

    Observations are state indices (a float tensor (N,) from the evaluator is fine).
    """

    def __init__(self, n_states: int, n_actions: int):
        super().__init__()
        self.discrete = True
        self.register_buffer("q", torch.zeros(n_states, n_actions, dtype=torch.float64))
        self.register_buffer("v", torch.zeros(n_states, dtype=torch.float64))

    def _rows(self, obs: Tensor) -> Tensor:
        return self.q[obs.reshape(-1).long().to(self.q.device)].to(device=obs.device, dtype=torch.float32)

    def pi(self, obs: Tensor) -> Distribution:
        return Categorical(logits=self._rows(obs), validate_args=False)

    def forward(self, obs: Tensor) -> Distribution:
        return self.pi(obs)

    @torch.no_grad()
    def sample(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        logp_all = torch.log_softmax(self._rows(obs), -1)
        scores = logp_all if deterministic else logp_all - torch.empty_like(logp_all).exponential_().log_()
        action = scores.argmax(-1)
        return action, logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    def env_action(self, action: Tensor) -> np.ndarray:
        return action.cpu().numpy()


def make_agent(options: Any, observation_space: gym.Space, action_space: gym.Space) -> TabularAgent:
    if not isinstance(observation_space, gym.spaces.Discrete) or not isinstance(action_space, gym.spaces.Discrete):
        raise UserError(f"tabular methods need Discrete observations and actions (e.g. FrozenLake-v1, CliffWalking-v1, "
                        f"Taxi-v4), got {observation_space} and {action_space}")
    return TabularAgent(int(observation_space.n), int(action_space.n))


def lookahead_q(model: dict, v: np.ndarray, n_actions: int, gamma: float) -> np.ndarray:
    """Q(s, a) = sum_s' P(s'|s, a) [r + gamma (1 - terminal) V(s')] from a toy-text model P[s][a] = [(p, s', r, term)]."""
    q = np.zeros((len(v), n_actions))
    for s, row in model.items():
        for a, outcomes in row.items():
            q[s, a] = sum(p * (r + gamma * (0.0 if term else v[s2])) for p, s2, r, term in outcomes)
    return q


class TabularLearner:
    """Online TD learning on one env; `run_episode` is one episode, `iterate` several."""

    def __init__(self, options: Any, envs: gym.vector.VectorEnv, method: str, seed: int):
        self.agent = make_agent(options, envs.single_observation_space, envs.single_action_space)
        if envs.num_envs != 1 or not hasattr(envs, "envs"):
            raise UserError("tabular methods step one env, got a vector env of "
                            f"{envs.num_envs} ({type(envs).__name__})")
        self.options, self.envs, self.method = options, envs, method
        self.env = envs.envs[0]  # the plain env: the vector wrapper would double the cost of a step
        self.Q, self.V = self.agent.q.numpy(), self.agent.v.numpy()  # views of the agent's buffers
        self.n_actions = int(self.env.action_space.n)
        self.rng = random.Random(seed)
        self.env_steps, self.episodes = 0, 0

    def start(self, seed: int, attack: Callable[[Tensor], Tensor] | None = None) -> None:
        if attack is not None:
            raise UserError("--adv-obs attacks real-valued observations; tabular states are indices")

    def epsilon(self) -> float:
        o = self.options
        if self.method == "td0":
            return 1.0  # the evaluated policy: uniformly random
        return linear_schedule(o.exploration_initial_eps, o.exploration_final_eps, o.exploration_fraction,
                               self.env_steps / o.steps)

    def act(self, s: int, eps: float) -> int:
        """Epsilon-greedy on Q(s, .), ties broken at random."""
        if self.rng.random() < eps:
            return self.rng.randrange(self.n_actions)
        row = self.Q[s]
        best = np.flatnonzero(row == row.max())
        return int(best[0]) if len(best) == 1 else int(best[self.rng.randrange(len(best))])

    def expected_q(self, s: int, eps: float) -> float:
        """sum_a pi(a|s) Q(s, a) under epsilon-greedy (greedy mass shared among tied maxima)."""
        row = self.Q[s]
        best = row == row.max()
        return float(eps * row.mean() + (1.0 - eps) * row[best].mean())

    def run_episode(self) -> tuple[float, int]:
        """One episode of online learning: (return, length)."""
        o, Q, V, gamma, alpha = self.options, self.Q, self.V, self.options.gamma, self.options.alpha
        s, _ = self.env.reset(seed=self.rng.randrange(2**31))
        eps = self.epsilon()
        a = self.act(s, eps)
        total, length, done = 0.0, 0, False
        while not done:
            s2, r, terminated, truncated, _ = self.env.step(a)
            total, length = total + r, length + 1
            self.env_steps += 1
            eps = self.epsilon()
            boot = 0.0 if terminated else 1.0
            if self.method == "sarsa":  # A' is chosen before the update and then taken (Sutton & Barto, p. 130)
                a2 = self.act(s2, eps)
                Q[s, a] += alpha * (r + gamma * boot * Q[s2, a2] - Q[s, a])
            else:  # the next action is chosen from the updated table (p. 131, 133)
                if self.method == "td0":
                    V[s] += alpha * (r + gamma * boot * V[s2] - V[s])
                else:
                    future = Q[s2].max() if self.method == "qlearning" else self.expected_q(s2, eps)
                    Q[s, a] += alpha * (r + gamma * boot * future - Q[s, a])
                a2 = self.act(s2, eps)
            s, a, done = s2, a2, terminated or truncated
        self.episodes += 1
        return float(total), length

    def iterate(self, progress_left: float) -> Iteration:
        start = self.env_steps
        returns, lengths = zip(*(self.run_episode() for _ in range(self.options.episodes_per_iteration)))
        if self.method == "td0":
            self._greedy_on_v()
        losses = {"charts/epsilon": self.epsilon(), "charts/episodes": float(self.episodes),
                  "charts/mean_value": float(self.V.mean() if self.method == "td0" else self.Q.max(1).mean())}
        return Iteration(self.env_steps - start, losses, list(returns), list(lengths))

    def _greedy_on_v(self) -> None:
        """td0's agent acts greedily on the one-step lookahead through the env's model (when the env has one)."""
        model = getattr(self.env.unwrapped, "P", None)
        if isinstance(model, dict):
            self.Q[:] = lookahead_q(model, self.V, self.n_actions, self.options.gamma)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"agent": self.agent.state_dict(), "env_steps": self.env_steps, "episodes": self.episodes,
                "rng": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])  # copies into the buffers: the numpy views stay valid
        rng = state["rng"]
        self.rng.setstate((rng["version"], tuple(int(x) for x in rng["state"]), rng["gauss"]))
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])

    def close(self) -> None:
        self.envs.close()


def _algorithm(method: str, description: str) -> Algorithm:
    options = TD0Options if method == "td0" else TabularControlOptions

    def make_learner(opts: Any, envs: gym.vector.VectorEnv, device: torch.device, seed: int) -> TabularLearner:
        return TabularLearner(opts, envs, method, seed)

    def figures(agent: TabularAgent, env_id: str, run_dir: Path) -> list[Path]:
        """policy.png: the grid with V as colour (td0: its V; else max_a Q) and the greedy policy as arrows."""
        from rlab.rl.grid_plot import plot_tabular_policy

        v = agent.v.numpy() if method == "td0" else agent.q.numpy().max(1)
        out = plot_tabular_policy(agent.q.numpy(), v, env_id, run_dir / "policy.png", title=f"{method} on {env_id}")
        return [out] if out is not None else []

    return Algorithm(method, description, options, make_learner, make_agent, figures=figures)


ALGORITHMS = [
    _algorithm("td0", "tabular TD(0) evaluation of V under the random policy (Sutton & Barto 6.1)"),
    _algorithm("qlearning", "tabular Q-learning, epsilon-greedy (Watkins, 1989; Sutton & Barto 6.5)"),
    _algorithm("sarsa", "tabular SARSA, epsilon-greedy (Rummery & Niranjan, 1994; Sutton & Barto 6.4)"),
    _algorithm("expected-sarsa", "tabular expected SARSA, epsilon-greedy (Sutton & Barto 6.6)"),
]
