import csv

import numpy as np
import pytest
from PIL import Image

from rlab.cli import main
from rlab.errors import UserError
from rlab.plots import plot_returns, plot_robustness, returns_by_variant, smooth
from rlab.runs import RunDir


def _fake_run(variant, seed, slope):
    run = RunDir.create("rl", "CartPole-v1__ppo", seed, {"variant": variant, "env": "CartPole-v1", "algo": "ppo"})
    for k in range(1, 21):
        run.log(k * 1000, **{"charts/episode_return": slope * k + seed})
    run.flush()
    return run.path


def test_smooth_is_a_trailing_mean():
    y = np.array([0.0, 2.0, 4.0, 6.0])
    assert np.allclose(smooth(y, 2), [0.0, 1.0, 3.0, 5.0])
    assert np.allclose(smooth(y, 1), y)


def test_returns_grouped_by_variant_with_mean_and_spread(runs_root):
    paths = [_fake_run("A", s, 1.0) for s in (0, 2)] + [_fake_run("B", 0, 3.0)]
    curves = returns_by_variant(paths, window=1, points=20)
    assert set(curves) == {"A", "B"} and int(curves["A"]["n"]) == 2
    # seeds 0 and 2 differ by a constant 2: mean is the midpoint, std is 1
    assert np.allclose(curves["A"]["mean"], np.linspace(1000, 20000, 20) / 1000 + 1)
    assert np.allclose(curves["A"]["std"], 1.0)


def test_a_run_with_one_logged_update_is_drawn_as_a_dot(runs_root, tmp_path, monkeypatch):
    import rlab.plots

    one = RunDir.create("rl", "CartPole-v1__vpg", 0, {"variant": "one update", "env": "CartPole-v1", "algo": "vpg"})
    one.log(4096, flush=True, **{"charts/episode_return": 21.0})
    figures = []
    monkeypatch.setattr(rlab.plots, "save_figure", lambda fig, out: figures.append(fig) or out)
    plot_returns([_fake_run("many updates", 0, 1.0), one.path], tmp_path / "r.png")
    markers = {line.get_label().split(" (")[0]: line.get_marker() for line in figures[0].axes[0].lines}
    assert markers == {"many updates": "None", "one update": "o"}


def test_plot_commands_write_pngs(runs_root, tmp_path, capsys):
    _fake_run("A", 0, 1.0)
    _fake_run("A", 1, 1.0)
    out = tmp_path / "r.png"
    assert main(["plot", "returns", str(runs_root / "rl"), "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 500
    results = tmp_path / "results.csv"
    with open(results, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["attack", "defense", "adaptive", "eps", "robust_accuracy"])
        w.writeheader()
        for eps, acc in [(0, 0.99), (0.1, 0.5), (0.3, 0.0)]:
            w.writerow({"attack": "pgd", "defense": "none", "adaptive": False, "eps": eps, "robust_accuracy": acc})
    assert plot_robustness(results, tmp_path / "rob.png").is_file()


def test_plot_errors_are_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="no such run folder"):
        plot_returns([tmp_path / "nope"], tmp_path / "x.png")
    assert main(["plot", "robustness", str(tmp_path / "missing.csv")]) == 2
    assert "results file not found" in capsys.readouterr().err


def test_plot_returns_draws_the_evaluations_when_asked(runs_root, tmp_path, monkeypatch):
    import rlab.plots

    run = RunDir.create("rl", "Pendulum-v1__ppo", 0, {"variant": "ppo gSDE", "env": "Pendulum-v1", "algo": "ppo"})
    for k in range(1, 6):  # episodes every 1k steps, evaluations every 2k, on another scale
        run.log(k * 1000, **{"charts/episode_return": -1000.0 + k, **({"eval/mean_return": -200.0 * k} if k % 2 == 0 else {})})
    run.flush()
    figures = []
    monkeypatch.setattr(rlab.plots, "save_figure", lambda fig, out: figures.append(fig) or out)
    assert main(["plot", "returns", str(run.path), "--metric", "eval", "--smooth", "1", "--out", str(tmp_path / "e.png")]) == 0
    line = figures[0].axes[0].lines[0]
    assert list(line.get_xdata()[[0, -1]]) == [2000, 4000] and list(line.get_ydata()[[0, -1]]) == [-400, -800]
