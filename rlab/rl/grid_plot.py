"""A tabular agent on its grid: V(s) as colour, the greedy action argmax_a Q(s, a) as an arrow per cell.

Knows the layouts of Gymnasium's toy-text grids: FrozenLake (any map; holes dark,
goal marked), CliffWalking (the cliff shaded) and Taxi (two panels of the 5x5
grid for one passenger and destination: waiting at R, then riding to G; P and D
mark pickup and dropoff). Other envs get no picture (None).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

# (d_row, d_col) of each action on the grid; None: not a move (Taxi's pickup, dropoff)
MOVES = {
    "FrozenLake": [(0, -1), (1, 0), (0, 1), (-1, 0)],  # left, down, right, up
    "CliffWalking": [(-1, 0), (0, 1), (1, 0), (0, -1)],  # up, right, down, left
    "Taxi": [(1, 0), (-1, 0), (0, 1), (0, -1), None, None],  # south, north, east, west, pickup, dropoff
}
ARROWS = {(0, -1): "\u2190", (1, 0): "\u2193", (0, 1): "\u2192", (-1, 0): "\u2191"}
TAXI_LOCS = [(0, 0), (0, 4), (4, 0), (4, 3)]  # R, G, Y, B


def _family(env_id: str) -> str | None:
    return next((f for f in MOVES if env_id.startswith(f)), None)


def grid_panels(env_id: str) -> list[tuple[str, np.ndarray, np.ndarray]] | None:
    """[(title, state index per cell (rows, cols), cell kind: ' ' plain, 'H' hole/cliff, 'G' goal, 'S' start)]."""
    family = _family(env_id)
    if family is None:
        return None
    env = gym.make(env_id)
    try:
        if family == "FrozenLake":
            desc = np.asarray(env.unwrapped.desc, dtype="U1")
            rows, cols = desc.shape
            kinds = np.where(desc == "F", " ", desc)
            return [("", np.arange(rows * cols).reshape(rows, cols), kinds)]
        if family == "CliffWalking":
            rows, cols = env.unwrapped.shape
            kinds = np.full((rows, cols), " ")
            kinds[rows - 1, 1:cols - 1], kinds[rows - 1, 0], kinds[rows - 1, cols - 1] = "H", "S", "G"
            return [("", np.arange(rows * cols).reshape(rows, cols), kinds)]
        taxi = env.unwrapped
        panels = []
        for title, passenger in (("passenger waiting at R, destination G", 0), ("passenger in the taxi, destination G", 4)):
            states = np.array([[taxi.encode(r, c, passenger, 1) for c in range(5)] for r in range(5)])
            kinds = np.full((5, 5), " ")
            kinds[TAXI_LOCS[1]] = "G"
            if passenger == 0:
                kinds[TAXI_LOCS[0]] = "S"
            panels.append((title, states, kinds))
        return panels
    finally:
        env.close()


def plot_tabular_policy(q: np.ndarray, v: np.ndarray, env_id: str, out_png: str | Path, title: str = "") -> Path | None:
    """Write the picture; None when env_id is not a known grid."""
    panels = grid_panels(env_id)
    if panels is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    moves = MOVES[_family(env_id)]
    rows, cols = panels[0][1].shape
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.0, 0.55 * cols + 1.5) * len(panels), 0.55 * rows + 1.6),
                             squeeze=False)
    shown = np.concatenate([v[s][k != "H"] for _, s, k in panels])
    vmin, vmax = float(shown.min()), float(shown.max())
    for ax, (sub, states, kinds) in zip(axes[0], panels):
        values = np.ma.masked_where(kinds == "H", v[states])
        image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1)
        for r in range(rows):
            for c in range(cols):
                kind, s = kinds[r, c], states[r, c]
                if kind == "H":
                    ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, color="0.15"))
                    continue
                if kind == "G" and _family(env_id) != "Taxi":
                    ax.text(c, r, "G", ha="center", va="center", color="white", fontsize=11, weight="bold")
                    continue
                row = q[s]
                if np.all(row == row[0]):  # never updated: no greedy action to show
                    continue
                move = moves[int(row.argmax())]
                mark = ARROWS[move] if move is not None else ("P" if int(row.argmax()) == 4 else "D")
                ax.text(c, r, mark, ha="center", va="center", color="white", fontsize=13, weight="bold")
                if kind in "SG" and kind != " ":
                    ax.text(c - 0.4, r - 0.3, kind, ha="left", va="center", color="orange", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(sub, fontsize=9)
    fig.colorbar(image, ax=axes[0][-1], shrink=0.8, label="V(s)")
    fig.suptitle(title or env_id, fontsize=10)
    return save_figure(fig, out_png)
