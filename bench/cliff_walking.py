"""Sutton & Barto, Example 6.6 (Cliff Walking): SARSA against Q-learning, online and greedy.

CliffWalking-v1, alpha 0.5, gamma 1, constant epsilon 0.1, 500 episodes x 50 independent
runs of the lab's tabular learner (rlab/rl/algos/tabular.py, the same code as
`rlab train --algo sarsa|qlearning --env CliffWalking-v1`). The book: the sum of
rewards per episode while learning (epsilon-greedy) settles near -25 for SARSA,
which learns the safe path, and near -50 for Q-learning, which learns the optimal
path along the cliff edge and falls off it while exploring; the greedy paths are
-17 (SARSA) and -13 (Q-learning).

Writes into runs/bench/cliff_walking__<time>/: cliff_walking.png (online return per
episode, mean over runs, moving average of 10, as the book's figure), results.csv
and report.md (the table: online return over the last 100 episodes, the greedy
path of each run), summary.json.

    python bench/cliff_walking.py                # 50 runs x 500 episodes
    python bench/cliff_walking.py --smoke        # 2 runs x 30 episodes (the tests)
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from rlab.rl.algos.tabular import TabularControlOptions, TabularLearner
from rlab.rl.environments import make_envs
from rlab.runs import RunDir, atomic_write_text, write_csv

ENV = "CliffWalking-v1"
BOOK = {"sarsa": (-25, -17), "qlearning": (-50, -13), "expected-sarsa": (None, None)}  # online, greedy path


def greedy_return(learner: TabularLearner, limit: int = 100) -> float | None:
    """Return of the greedy policy from the start (ties: first action); None when it loops (no goal in `limit`)."""
    env = learner.env
    s, _ = env.reset(seed=0)
    total = 0.0
    for _ in range(limit):
        s, r, terminated, _, _ = env.step(int(learner.Q[s].argmax()))
        total += r
        if terminated:
            return total
    return None


def one_run(method: str, seed: int, episodes: int, alpha: float, epsilon: float) -> tuple[np.ndarray, float | None]:
    """(online return per episode, greedy return) of one run."""
    options = TabularControlOptions(steps=10**9, alpha=alpha, gamma=1.0, exploration_fraction=0.0,
                                    exploration_initial_eps=epsilon, exploration_final_eps=epsilon)
    learner = TabularLearner(options, make_envs(ENV, 1), method, seed)
    try:
        online = np.array([learner.run_episode()[0] for _ in range(episodes)])
        return online, greedy_return(learner)
    finally:
        learner.close()


def plot(curves: dict[str, np.ndarray], out, runs: int, smooth: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, c in curves.items():
        mean = c.mean(0)
        avg = np.convolve(mean, np.ones(smooth) / smooth, mode="valid") if len(mean) >= smooth else mean
        ax.plot(np.arange(len(avg)) + (len(mean) - len(avg)) + 1, avg, label={"sarsa": "SARSA", "qlearning": "Q-learning",
                                                                             "expected-sarsa": "Expected SARSA"}[method])
    ax.set_ylim(-100, -10)
    ax.set_xlabel("episodes")
    ax.set_ylabel("sum of rewards during episode")
    ax.set_title(f"{ENV} (Sutton & Barto, Example 6.6): alpha 0.5, epsilon 0.1\n"
                 f"mean of {runs} runs, moving average of {smooth} episodes", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--methods", default="sarsa,qlearning", help="any of sarsa, qlearning, expected-sarsa")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="2 runs x 30 episodes")
    args = p.parse_args()
    if args.smoke:
        args.runs, args.episodes = 2, 30
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in BOOK]
    if bad:
        raise SystemExit(f"--methods: {bad[0]!r} is not allowed; choose from {', '.join(BOOK)}")
    run = RunDir.create("bench", "cliff_walking", args.seed, vars(args))
    curves, greedy, rows = {}, {}, []
    start = time.perf_counter()
    for method in methods:
        results = [one_run(method, args.seed + r, args.episodes, args.alpha, args.epsilon) for r in range(args.runs)]
        curves[method] = np.stack([online for online, _ in results])
        greedy[method] = [g for _, g in results]
        last = curves[method][:, -min(100, args.episodes):].mean(1)  # per run
        counts = Counter("loop" if g is None else f"{g:g}" for g in greedy[method])
        reached = [g for g in greedy[method] if g is not None]
        book_online, book_greedy = BOOK[method]
        rows.append({"method": method, "runs": args.runs, "episodes": args.episodes,
                     "online_return_last100_mean": float(last.mean()), "online_return_last100_std": float(last.std()),
                     "online_return_all_mean": float(curves[method].mean()),
                     "greedy_return_median": float(np.median(reached)) if reached else float("nan"),
                     "greedy_paths": " ".join(f"{k}:{v}" for k, v in counts.most_common()),
                     "book_online": book_online, "book_greedy": book_greedy})
        print(f"{method}: online (last 100 episodes) {last.mean():.1f} +- {last.std():.1f} over runs, greedy paths "
              f"{rows[-1]['greedy_paths']} (return:runs)", flush=True)
    figure = plot(curves, run.path / "cliff_walking.png", args.runs, smooth=min(10, args.episodes))
    lines = [f"## Sutton & Barto Example 6.6 on {ENV}: {args.runs} runs x {args.episodes} episodes, alpha {args.alpha}, "
             f"epsilon {args.epsilon}, gamma 1 ({time.perf_counter() - start:.0f} s)", "",
             "| method | online return, last 100 episodes (mean +- std over runs) | book | greedy path return "
             "(return: runs; loop: never reaches the goal) | book |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['online_return_last100_mean']:.1f} +- {r['online_return_last100_std']:.1f} "
                     f"| {r['book_online'] or ''} | {r['greedy_paths']} | {r['book_greedy'] or ''} |")
    lines += ["", f"![Example 6.6]({figure.name})"]
    report = "\n".join(lines)
    print(report)
    write_csv(run.path / "results.csv", rows)
    atomic_write_text(run.path / "report.md", report + "\n")
    run.write_summary({"rows": rows, "figure": str(figure)})
    print(run.path)


if __name__ == "__main__":
    main()
