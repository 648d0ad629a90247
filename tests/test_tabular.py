"""Tabular TD: Q-learning finds CliffWalking's optimal 13-step path and SARSA a safer one (Sutton & Barto,
Example 6.6), TD(0) converges to the true V of the random policy, a resumed run equals an uninterrupted one."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rlab.cli import main
from rlab.rl.evaluation import load_agent

COMMON = ["--no-progress", "--device", "cpu", "--eval-episodes", "1"]


def _run(capsys, *argv: str) -> Path:
    assert main(list(argv)) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def greedy_path(run: Path, limit: int = 100) -> tuple[float, int]:
    """(return, steps) of the greedy policy from CliffWalking's start; a looping policy stops at `limit`."""
    agent, _ = load_agent(run)
    env = gym.make("CliffWalking-v1")
    s, _ = env.reset(seed=0)
    total, steps = 0.0, 0
    while steps < limit:
        s, r, terminated, _, _ = env.step(int(agent.q[s].argmax()))
        total, steps = total + r, steps + 1
        if terminated:
            break
    return total, steps


def test_q_learning_walks_the_cliff_edge(runs_root, capsys):
    """Example 6.6's settings (the preset: alpha 0.5, gamma 1, epsilon 0.1): Q-learning's greedy path is the
    optimal 13 steps along the cliff edge (SARSA's safer path: bench/cliff_walking.py)."""
    run = _run(capsys, "train", "--algo", "qlearning", "--env", "CliffWalking-v1", "--steps", "12000", *COMMON)
    assert greedy_path(run) == (-13.0, 13)
    assert json.loads((run / "summary.json").read_text())["eval/mean_return"] == -13.0
    assert (run / "policy.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((run / "config.json").read_text())["options"]
    assert (config["alpha"], config["gamma"], config["exploration_initial_eps"], config["exploration_final_eps"]) == \
        (0.5, 1.0, 0.1, 0.1)
    online = [float(r["charts/episode_return"]) for r in _rows(run)]
    assert np.mean(online[-10:]) < -13  # while exploring with epsilon 0.1 it still falls off the edge at times


def _random_policy_values(env_id: str, gamma: float) -> np.ndarray:
    """V of the uniformly random policy by solving V = r_pi + gamma P_pi V (terminal states: 0)."""
    env = gym.make(env_id).unwrapped
    n, actions = env.observation_space.n, env.action_space.n
    P, r = np.zeros((n, n)), np.zeros(n)
    for s in range(n):
        for a in range(actions):
            for p, s2, reward, terminal in env.P[s][a]:
                r[s] += p * reward / actions
                if not terminal:
                    P[s, s2] += p / actions
    return np.linalg.solve(np.eye(n) - gamma * P, r)


def test_td0_converges_to_the_random_policys_values(runs_root, capsys):
    run = _run(capsys, "train", "--algo", "td0", "--env", "FrozenLake-v1", "--steps", "60000", "--alpha", "0.02",
               "--gamma", "0.95", *COMMON)
    agent, _ = load_agent(run)
    v, exact = agent.v.numpy(), _random_policy_values("FrozenLake-v1", 0.95)
    desc = np.asarray(gym.make("FrozenLake-v1").unwrapped.desc, dtype="U1").reshape(-1)
    visited = desc != "H"
    visited[-1] = False  # the goal and the holes are terminal: never updated
    assert exact[visited].max() > 0.2  # the values are not all near 0 (the test can tell a right V from zeros)
    assert np.abs(v[visited] - exact[visited]).max() < 0.05, (v.round(3), exact.round(3))
    assert (run / "policy.png").is_file()


def test_a_resumed_tabular_run_equals_the_uninterrupted_one(runs_root, capsys, tmp_path):
    from rlab.config import make_config
    from rlab.rl.trainer import TrainConfig, train

    args = dict(algo="expected-sarsa", env="Taxi-v4", steps=6000, episodes_per_iteration=2, checkpoint_every=1000,
                eval_episodes=2,
                progress=False, device="cpu", seed=4)
    whole = Path(train(make_config(TrainConfig, **args)))
    stopped = Path(train(make_config(TrainConfig, **args), lambda steps, secs, agent: steps >= 3000))
    assert main(["train", "--resume", str(stopped), "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    wall = {"charts/sps", "time/train_seconds"}
    a = [{k: v for k, v in r.items() if k not in wall} for r in _rows(whole)]
    b = [{k: v for k, v in r.items() if k not in wall} for r in _rows(stopped)]
    assert len(a) > 10 and a == b
    qa, qb = load_agent(whole)[0].q, load_agent(stopped)[0].q
    assert (qa == qb).all() and qa.abs().sum() > 0


def test_tabular_refusals(runs_root, capsys):
    assert main(["train", "--algo", "sarsa", "--env", "Taxi-v4", "--adv-obs", "fgsm", "--adv-eps", "0.1",
                 "--steps", "100", *COMMON]) == 2
    assert "need a flat Box observation space; Taxi-v4 has Discrete(500)" in capsys.readouterr().err
    assert not (runs_root / "rl").exists()  # refused before a run folder was made
    assert main(["train", "--algo", "td0", "--env", "Taxi-v4", "--exploration-final-eps", "0.1", *COMMON]) == 2
    assert "not an option of --algo td0" in capsys.readouterr().err
