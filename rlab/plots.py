"""Plots a person would put in a report: labelled axes with units, mean ± spread over seeds.

    plot_returns(run_dirs, out_png)      return vs environment steps (or wall time),
                                         one line per variant, shaded ± 1 std over seeds
    plot_robustness(results_csv, out_png) accuracy vs eps, one line per attack/defense, and the
                                         worst case per defense (the headline figure)
    worst_case(rows)                     per defense and eps, the lowest robust accuracy over every
                                         attack and attacker kind
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rlab.config import check, opt  # noqa: E402
from rlab.errors import UserError  # noqa: E402
from rlab.runs import RunDir, atomic_write_bytes, find_run_dirs  # noqa: E402

RETURN_COLUMN = "charts/episode_return"
EVAL_COLUMN = "eval/mean_return"  # `rlab train --eval-every`: mean of --eval-episodes deterministic episodes
WALL_COLUMN = "time/train_seconds"  # what every trainer logs as its training clock (evaluation excluded)


def variant_label(options: dict[str, Any]) -> str:
    """The legend name of a training run: its `variant`, else algo/returns/baseline."""
    if options.get("variant"):
        return str(options["variant"])
    parts = [str(options.get("algo", "?"))]
    for key in ("returns", "baseline", "critic"):
        if options.get(key) not in (None, "", "none"):
            parts.append(str(options[key]))
    return " / ".join(parts)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points (window 1: unchanged)."""
    if window <= 1 or len(y) < 2:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y, dtype=float)
    for i in range(len(y)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _curve(run: RunDir, x_axis: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for row in run.metrics:
        if column not in row:
            continue
        xs.append(float(row["step"]) if x_axis == "steps" else float(row.get(WALL_COLUMN, np.nan)))
        ys.append(float(row[column]))
    return np.asarray(xs), np.asarray(ys)


def find_curve_dirs(paths: list[str | Path]) -> list[Path]:
    """Run folders of the lab and Stable-Baselines3 log folders (rlab.rl.sb3: rl-baselines3-zoo's Monitor files or
    evaluations.npz; a model .zip names its folder) at or below `paths`, in the order given."""
    from rlab.rl.sb3 import log_folders

    found: list[Path] = []
    for p in map(Path, paths):
        sb3 = log_folders(p) if p.exists() and not (p / "config.json").is_file() else []
        if p.suffix == ".zip" and p.is_file() and not sb3:
            raise UserError(f"{p} has no training log beside it (Monitor files *monitor.csv or evaluations.npz)")
        if sb3:  # a zoo folder, or a folder holding both kinds
            found += (find_run_dirs([p]) if p.is_dir() and any(p.rglob("config.json")) else []) + sb3
        else:
            found += find_run_dirs([p])  # one line for a missing path or a folder with no run below it
    return found


def _training_curve(path: Path, x_axis: str, column: str) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(legend label, env id, x, y) of a lab run folder or an SB3 log folder."""
    if not (path / "config.json").is_file():
        from rlab.rl.sb3 import training_curve

        return training_curve(path, x_axis)
    run = RunDir.open(path)
    options = run.config.get("options", {})
    return (variant_label(options), options.get("env", ""), *_curve(run, x_axis, column))


def returns_by_variant(run_dirs: list[Path], x_axis: str = "steps", column: str = RETURN_COLUMN,
                       window: int = 5, points: int = 200) -> dict[str, dict[str, np.ndarray]]:
    """Per variant: a common x grid and the mean, std and count of the smoothed curves over seeds."""
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for path in run_dirs:
        label, _, x, y = _training_curve(Path(path), x_axis, column)
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.sum() >= 1:
            groups[label].append((x[keep], smooth(y[keep], window)))
    if not groups:
        raise UserError(f"no run folder among {len(run_dirs)} has a {column!r} column to plot")
    out = {}
    for label, curves in groups.items():
        x_max = min(c[0][-1] for c in curves)
        x_min = max(c[0][0] for c in curves)
        grid = np.linspace(x_min, x_max, points) if x_max > x_min else np.array([x_min])
        ys = np.stack([np.interp(grid, cx, cy) for cx, cy in curves])
        out[label] = {"x": grid, "mean": ys.mean(0), "std": ys.std(0), "n": np.array(len(curves))}
    return out


def plot_returns(run_dirs: list[str | Path], out_png: str | Path, x_axis: str = "steps", window: int = 5,
                 title: str | None = None, column: str = RETURN_COLUMN) -> Path:
    """Return against environment steps (or wall seconds), mean ± 1 std over seeds, one line per variant.

    `run_dirs` may name Stable-Baselines3 logs too (rl-baselines3-zoo folders, a model .zip with its Monitor
    files): their training episodes are drawn beside the lab's, one line per SB3 algorithm.
    """
    runs = find_curve_dirs(list(run_dirs))
    if column != RETURN_COLUMN and any(not (r / "config.json").is_file() for r in runs):
        raise UserError(f"{column} is logged by the lab's runs only; Stable-Baselines3 logs plot training episodes")
    curves = returns_by_variant(runs, x_axis, column, window=window)
    envs = sorted({_training_curve(r, x_axis, RETURN_COLUMN)[1] for r in runs} - {""})
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for label, c in curves.items():  # in the order the runs were given
        n = int(c["n"])
        line, = ax.plot(c["x"], c["mean"], lw=1.8, label=f"{label} (n={n} seed{'s' if n != 1 else ''})",
                        marker="o" if len(c["x"]) == 1 else None)  # one logged update: a dot, not an invisible line
        if n > 1:
            ax.fill_between(c["x"], c["mean"] - c["std"], c["mean"] + c["std"], color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel("environment steps" if x_axis == "steps" else "wall-clock time (s)")
    ax.set_ylabel("episode return (undiscounted)" if column == RETURN_COLUMN else
                  "deterministic evaluation: mean return (undiscounted)")
    ax.set_title(title or f"{', '.join(envs) or 'training'}: mean ± 1 std over seeds (moving average of {window})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    if x_axis == "steps":
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_steps_label))
    return save_figure(fig, out_png)


def save_figure(fig: plt.Figure, out_png: str | Path) -> Path:
    """Lay out, write (atomically, creating folders) and close a figure."""
    fig.tight_layout()
    out_png = Path(out_png)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png


def _steps_label(v: float, _pos: int) -> str:
    return f"{v / 1e6:g}M" if abs(v) >= 1e6 else f"{v / 1e3:g}k" if abs(v) >= 1e3 else f"{v:g}"


def read_results(results_csv: str | Path) -> list[dict[str, Any]]:
    path = Path(results_csv)
    if not path.is_file():
        raise UserError(f"results file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"attack", "defense", "eps", "robust_accuracy"}
    if not rows or not need <= set(rows[0]):
        raise UserError(f"{path} is not a benchmark results.csv (needs columns {', '.join(sorted(need))})")
    return rows


def eps_label(eps: float) -> str:
    """0 -> '0'; multiples of 1/255 below 0.1 -> 'k/255'; else the number."""
    k = eps * 255
    if eps == 0:
        return "0"
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-4 and eps < 0.1 else f"{eps:g}"


def is_adaptive(row: dict[str, Any]) -> bool:
    """The row's attacker differentiated through the defense (results.csv stores True/False as text)."""
    return str(row.get("adaptive", "False")).lower() in ("true", "1", "yes")


def worst_case(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (defense, eps), in the order first seen: the lowest robust accuracy over every attack and both
    attacker kinds, and the row that gave it (ties: the first). This is a defense's figure at that eps
    (../shared/DESIGN.md): an attacker who reads a higher number simply attacked less well."""
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for r in rows:
        key = (r["defense"], round(float(r["eps"]), 6))
        acc = float(r["robust_accuracy"])
        if key not in best or acc < best[key]["robust_accuracy"]:
            best[key] = {"defense": key[0], "eps": key[1], "robust_accuracy": acc, "attack": r["attack"],
                         "attacker": "adaptive" if is_adaptive(r) else "non-adaptive",
                         "clean_accuracy": float(r["clean_accuracy"]) if r.get("clean_accuracy") not in (None, "")
                         else None}
    return list(best.values())


def adaptive_above_twin(rows: list[dict[str, Any]]) -> dict[tuple[str, str, float], float]:
    """(attack, defense, eps) -> the non-adaptive accuracy, where the adaptive attacker read higher than it:
    a weaker adaptive attack (e.g. a BPDA gradient that misleads), never a stronger defense."""
    plain = {(r["attack"], r["defense"], round(float(r["eps"]), 6)): float(r["robust_accuracy"])
             for r in rows if not is_adaptive(r)}
    return {key: plain[key] for r in rows if is_adaptive(r)
            and (key := (r["attack"], r["defense"], round(float(r["eps"]), 6))) in plain
            and float(r["robust_accuracy"]) > plain[key]}


def plot_robustness(results_csv: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Robust accuracy (%) against eps: first the worst case per defense over every attack and attacker
    (the headline), then one panel per attack, one colour per defense, solid for the non-adaptive attacker
    and dashed for the adaptive one; a red ring marks an adaptive point above its non-adaptive twin."""
    rows = read_results(results_csv)
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    colors = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(defenses)}
    eps_values = sorted({float(r["eps"]) for r in rows})
    flagged = adaptive_above_twin(rows)
    worst = worst_case(rows)
    panels = ["worst case"] + attacks
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols + 0.6, 3.8 * nrows + 0.6), dpi=120,
                             squeeze=False, sharey=True)
    for ax, panel in zip(axes.flat, panels):
        if panel == "worst case":
            for defense in defenses:
                pts = sorted((w["eps"], 100 * w["robust_accuracy"]) for w in worst if w["defense"] == defense)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, lw=2.4, color=colors[defense],
                        label=defense)
            ax.set_title("worst case over all attacks and attackers", fontsize=10, fontweight="bold")
        for defense in defenses if panel != "worst case" else []:
            for adaptive in (False, True):
                pts = sorted((float(r["eps"]), 100 * float(r["robust_accuracy"])) for r in rows
                             if r["attack"] == panel and r["defense"] == defense and is_adaptive(r) == adaptive)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if adaptive else "-", marker="o", ms=3.5,
                            lw=1.6, color=colors[defense], label=defense + (" (adaptive)" if adaptive else ""))
            above = [(e, 100 * float(r["robust_accuracy"])) for r in rows if is_adaptive(r)
                     and (r["attack"], r["defense"], e := round(float(r["eps"]), 6)) in flagged
                     and r["attack"] == panel and r["defense"] == defense]
            if above:
                ax.scatter([p[0] for p in above], [p[1] for p in above], s=70, facecolors="none", edgecolors="red",
                           lw=1.4, zorder=5, label=f"{defense}: adaptive above non-adaptive")
        if panel != "worst case":
            ax.set_title(panel, fontsize=10)
        ax.set_xticks(eps_values, [eps_label(e) for e in eps_values], fontsize=8)
        ax.set_xlabel("ε (L∞, images in [0, 1])")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    for ax in axes[:, 0]:
        ax.set_ylabel("robust accuracy (%)")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or "Robust accuracy against ε (solid: non-adaptive attacker, dashed: adaptive)", fontsize=10)
    return save_figure(fig, out_png)


@dataclass
class PlotReturnsConfig:
    run_dirs: list[str] = opt(None, "run folders, or folders holding run folders; Stable-Baselines3 logs too "
                                    "(rl-baselines3-zoo folders, a model .zip with its monitor.csv)", positional=True,
                              nargs="+")
    out: str = opt("", "output PNG (default: a new run folder under runs/plots/)")
    x: str = opt("steps", "x axis", choices=["steps", "wall"])
    smooth: int = opt(5, "moving-average window over logged points")
    metric: str = opt("episode", "training episodes' returns, or the deterministic evaluations of "
                                 "`rlab train --eval-every` (lab runs only)", choices=["episode", "eval"])

    def __post_init__(self) -> None:
        check(self.smooth >= 1, f"--smooth must be >= 1, got {self.smooth}")


@dataclass
class PlotRobustnessConfig:
    results_csv: str = opt(None, "results.csv written by `rlab bench attacks`", positional=True)
    out: str = opt("", "output PNG (default: robustness.png next to the CSV)")


def plot_returns_cmd(cfg: PlotReturnsConfig) -> Path:
    runs = find_curve_dirs(cfg.run_dirs)  # refuse bad paths before making an output folder
    out = Path(cfg.out) if cfg.out else RunDir.create("plots", "returns", None, cfg).path / "returns.png"
    return plot_returns(runs, out, x_axis=cfg.x, window=cfg.smooth,
                        column=EVAL_COLUMN if cfg.metric == "eval" else RETURN_COLUMN)


def plot_robustness_cmd(cfg: PlotRobustnessConfig) -> Path:
    out = Path(cfg.out) if cfg.out else Path(cfg.results_csv).with_name("robustness.png")
    return plot_robustness(cfg.results_csv, out)
