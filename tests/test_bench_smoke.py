"""Every bench script's --smoke mode, each in its own process, so a renamed import or a moved function
cannot rot a benchmark unnoticed.

Each script runs as `python bench/<name>.py --smoke` from the repository root, one torch thread, with
RLAB_RUNS (and RLAB_CACHE) in a temporary folder; the checks read what the script says it writes: its run
folder's results.csv / report.md, or the table it prints. The optional peers (torchattacks, ART: `make
bench`) have tests of their own, skipped with the reason when they are not installed. Smoke figures mean
nothing; the checks hold for any budget (shapes, ranges, identities such as accuracy at eps 0 = clean).
The scripts run two at a time (the CI machine has 2 cores; each is single-threaded).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SCRIPT_TIMEOUT_S = 300


@dataclass
class Smoke:
    script: str
    returncode: int
    stdout: str
    stderr: str
    runs: Path  # the RLAB_RUNS of this script's run

    def ok(self) -> "Smoke":
        assert self.returncode == 0, f"bench/{self.script}.py --smoke exited {self.returncode}:\n{self.stderr[-3000:]}"
        return self

    def run_dir(self, name: str) -> Path:
        """The one bench run folder `name`__... this run wrote."""
        found = sorted((self.runs / "bench").glob(f"{name}__*"))
        assert len(found) == 1, f"expected one runs/bench/{name}__* folder, found {found}"
        return found[0]


def run_script(script: str, tmp: Path, cache: Path) -> Smoke:
    env = {**os.environ, "RLAB_RUNS": str(tmp / "runs"), "RLAB_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    return Smoke(script, proc.returncode, proc.stdout, proc.stderr, tmp / "runs")


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fraction(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    assert 0.0 <= value <= 1.0, f"{text} is not an accuracy or a rate"
    return value


def table_row(stdout: str, label: str) -> list[str]:
    """The cells of the printed row `label`: the line that starts with it, then blanks and a number."""
    for line in stdout.splitlines():
        if re.match(rf"{re.escape(label)}\s+[\d.]", line):
            return line[len(label):].split()
    raise AssertionError(f"no printed row {label!r} in:\n{stdout}")


# ----------------------------------------------------------------------------- what each script claims


def check_threads(s: Smoke) -> None:
    lines = re.findall(r"threads=(\d+): MLP update 3 it ([\d.]+) s, 20 single forwards ([\d.]+) s, CNN 1 it ([\d.]+) s",
                       s.stdout)
    assert [t for t, *_ in lines][:1] == ["1"], s.stdout
    assert all(float(x) >= 0 for _, *times in lines for x in times)


def check_rl_vs_sb3(s: Smoke) -> None:
    for env_id, agents, (low, high) in (
            ("CartPole-v1", ["ppo", "a2c", "dqn", "sb3-ppo", "sb3-a2c", "sb3-dqn"], (1.0, 500.0)),
            ("Pendulum-v1", ["ddpg", "td3", "sac", "sb3-ddpg", "sb3-td3", "sb3-sac"], (-2000.0, 0.0))):
        run = s.run_dir(f"rl_vs_sb3__{env_id}")
        rows = rows_of(run / "results.csv")
        assert [r["agent"] for r in rows] == agents  # lab and peer, one run per env
        for r in rows:
            assert r["seed"] == "0" and r["reused"] == "0"
            assert 0 < int(float(r["env_steps"])) <= 512 + 256  # the budget, overshot by at most one rollout
            assert low <= float(r["final_eval"]) <= high  # evaluated at least once (every 256 steps)
            assert low <= float(r["return_at_512"]) <= high
        # SAC updates from step 100 on both sides; DDPG and TD3 wait for the zoo's 10k random steps
        evals = rows_of(run / "evals.csv")  # every evaluation; each run's last one is its final_eval
        for r in rows:
            mine = [e for e in evals if (e["agent"], e["seed"]) == (r["agent"], r["seed"])]
            assert [int(e["env_steps"]) for e in mine] == sorted({int(e["env_steps"]) for e in mine}) and mine
            assert float(mine[-1]["return"]) == pytest.approx(float(r["final_eval"]))
        grads = {r["agent"]: int(float(r["gradient_steps"])) for r in rows}
        if env_id == "Pendulum-v1":
            assert grads["sac"] > 300 and grads["sb3-sac"] > 300 and grads["td3"] == grads["sb3-td3"] == 0
        report = (run / "report.md").read_text()
        assert f"| {agents[-2]} | 0 |" in report and f"| {agents[-1]} | 0 |" in report
        assert "steps / SB3 same algo" in report and (run / "summary.json").is_file()


def check_ladder(s: Smoke) -> None:
    run = s.run_dir("ladder__CartPole-v1")
    printed = re.findall(r"^(.+) (\d+) (/\S+)$", s.stdout, re.M)  # label seed run_dir, one line per training run
    labels = [label for label, _, _ in printed]
    assert len(set(labels)) == len(labels) >= 10 and {seed for _, seed, _ in printed} == {"0"}, s.stdout
    assert labels[0] == "v0 immediate reward" and labels[-1] == "ppo"
    run_dirs = [Path(line) for line in (run / "runs.txt").read_text().split()]
    assert run_dirs == [Path(path) for _, _, path in printed]
    assert [json.loads((d / "summary.json").read_text())["variant"] for d in run_dirs] == labels
    assert (run / "ladder.png").read_bytes()[:4] == b"\x89PNG"


def check_classifier_accuracy(s: Smoke) -> None:
    run = s.run_dir("classifier_accuracy__0")
    rows = rows_of(run / "results.csv")
    assert list(rows[0]) == ["task", "model", "epoch", "train_seconds", "test_accuracy"]
    assert [(r["task"], r["model"], r["epoch"]) for r in rows] == [("MNIST-5k", "mnist_cnn", "1"),
                                                                  ("synthetic_images", "fastnet", "1")]
    assert all(fraction(r["test_accuracy"]) >= 0 for r in rows)
    report = (run / "report.md").read_text()
    assert "| MNIST-5k | mnist_cnn | 1 |" in report and "(TTA " in report  # the CIFAR task's TTA evaluation ran
    assert (run / "accuracy_vs_time.png").read_bytes()[:4] == b"\x89PNG"


def check_attack_speed(s: Smoke) -> None:
    clean = fraction(re.search(r"clean accuracy ([\d.]+) on 16 images", s.stdout).group(1))
    assert table_row(s.stdout, "limit: 2 x (forward + backward)")
    for label in ("ours PGD (full budget)", "ours PGD (early stop)", "foolbox LinfPGD"):
        seconds, _, success = table_row(s.stdout, label)
        assert float(seconds) > 0 and fraction(success) >= 0
    for side in ("ours", "foolbox"):  # the robust-accuracy curve: seconds, then accuracy at eps 0, 0.1, 0.3
        _, *accuracy = table_row(s.stdout, side)
        assert len(accuracy) == 3, s.stdout
        assert abs(fraction(accuracy[0]) - clean) < 1e-9  # eps 0 changes nothing
        assert fraction(accuracy[2]) <= fraction(accuracy[0])


def check_transfer(s: Smoke) -> None:
    assert "attacking 6 test images (2 per class)" in s.stdout
    for label in ("none (clean)", "FGSM", "I-FGSM", "MI-FGSM", "DI-MI-FGSM", "ensemble I-FGSM", "ensemble MI-FGSM",
                  "ensemble DI-MI-FGSM"):
        proxy, victim = table_row(s.stdout, label)
        assert fraction(proxy) >= 0 and fraction(victim) >= 0


def check_adv_training_mnist(s: Smoke) -> None:
    run = s.run_dir("adv_training_mnist__0")
    rows = rows_of(run / "results.csv")
    assert list(rows[0]) == ["method", "epochs", "grads_per_image", "train_seconds", "clean", "pgd_robust",
                             "eval_seconds", "meets_target"]
    # forward-backward passes per image in 1 epoch: PGD-2 training 2 + 1, fast 2, free 2 replays
    assert {r["method"]: int(r["grads_per_image"]) for r in rows} == {"none": 1, "pgd": 3, "fast": 2, "free": 2}
    for r in rows:
        assert fraction(r["pgd_robust"]) <= fraction(r["clean"])
    assert "MNIST-5k (200 train / 20 test)" in (run / "report.md").read_text()


def check_defense_table(s: Smoke) -> None:
    run = s.run_dir("defense_table__0")
    rows = rows_of(run / "results.csv")
    assert list(rows[0]) == ["defense", "gradient_rule", "eps", "clean", "undefended", "non_adaptive", "adaptive",
                             "robust"]
    rules = {r["defense"]: r["gradient_rule"] for r in rows}
    assert len(rules) == 8 and {rules["none"], rules["bitdepth 1 bit"], rules["resize-pad 0.9"]} == {
        "exact", "bpda", "eot"}
    assert rules["jpeg q=50 (cubic surrogate)"] == "surrogate"
    for r in rows:
        assert r["eps"] == "0.3"
        # a digit counts as robust only if it survives both attacks
        assert fraction(r["robust"]) <= min(fraction(r["non_adaptive"]), fraction(r["adaptive"])) + 1e-9
    assert (run / "report.md").read_text().count("\n| ") == 9  # header + 8 defenses


def check_cartpole_speed(s: Smoke) -> None:
    kinds = ["gym-sync", "gym-vector", "torch64", "torch32-t"]
    cells = table_row(s.stdout, "        4")  # num_envs 4
    assert all(float(c.replace(",", "")) > 0 for c in cells[:len(kinds)]), s.stdout  # steps/s of every kind
    assert re.search(r"^\s+0\s+(not by \d+|[\d.]+ \(\d+\))\s+(not by \d+|[\d.]+ \(\d+\))", s.stdout, re.M), s.stdout
    assert "median over 1 seed(s)" in s.stdout


def check_sweep_speedup(s: Smoke) -> None:
    for backend, workers in (("sequential (processes)", 1), ("2 processes", 2)):
        row = re.search(rf"\| {re.escape(backend)} \| {workers} \| ([\d.]+) \| ([\d.]+)x \| ([\d.]+) \| 1/1 \|",
                        s.stdout)
        assert row, f"no finished row for {backend}:\n{s.stdout}"  # 1/1: the cell's rlab train succeeded
    assert "Ray rows skipped (--no-ray)" in s.stdout


def check_autoattack_vs_peers(s: Smoke) -> None:
    run = s.run_dir("autoattack_vs_peers__0")
    rows = {r["attack"]: r for r in rows_of(run / "results.csv")}
    clean = json.loads((run / "summary.json").read_text())["clean_accuracy"]
    for name in ("lab auto (fast)", "lab PGD-5 x 2"):  # the lab's rows, side by side on the same 20 digits
        assert fraction(rows[name]["robust_accuracy"]) <= clean and float(rows[name]["seconds"]) > 0
    report = (run / "report.md").read_text()
    assert "20 test images" in report and "| lab auto (fast) |" in report


def check_adv_training_curve(s: Smoke) -> None:
    run = s.run_dir("adv_training_curve__0")
    rows = rows_of(run / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # one row per kept epoch of the 2-epoch smoke run
    for r in rows:
        assert fraction(r["auto"]) <= fraction(r["clean"]) and float(r["train_cpu_seconds"]) > 0
        assert 0 <= fraction(r["test_accuracy_full"]) <= 1 and float(r["auto_seconds"]) > 0
    assert float(rows[0]["train_cpu_seconds"]) < float(rows[1]["train_cpu_seconds"])
    assert "| 2 |" in (run / "report.md").read_text() and (run / "curve.png").read_bytes()[:4] == b"\x89PNG"


def check_poison_detection(s: Smoke) -> None:
    run = s.run_dir("poison_detection__0")
    rows = {r["detector"]: r for r in rows_of(run / "results.csv")}
    expected = {"ours spectral", "ours clustering"} | (
        {"ART spectral", "ART clustering"} if importlib.util.find_spec("art") else set())
    assert set(rows) == expected, rows
    if not importlib.util.find_spec("art"):
        assert "peer art is not installed" in s.stdout
    for r in rows.values():  # 10% of the 600 smoke digits were poisoned
        assert r["poison_rate"] == "0.1" and 0 <= int(r["flagged"]) <= 600 and float(r["seconds"]) > 0
        assert 0 <= fraction(r["recall"]) and (r["precision"] == "") == (r["flagged"] == "0")
    assert "| 10% | ours spectral |" in (run / "report.md").read_text()


CHECKS = {
    "threads": check_threads, "rl_vs_sb3": check_rl_vs_sb3, "ladder": check_ladder,
    "classifier_accuracy": check_classifier_accuracy, "attack_speed": check_attack_speed, "transfer": check_transfer,
    "adv_training_mnist": check_adv_training_mnist, "defense_table": check_defense_table,
    "cartpole_speed": check_cartpole_speed, "sweep_speedup": check_sweep_speedup,
    "autoattack_vs_peers": check_autoattack_vs_peers, "poison_detection": check_poison_detection,
    "adv_training_curve": check_adv_training_curve,
}
# optional peers of a script: module -> the row it adds
PEERS = {("attack_speed", "torchattacks"): "torchattacks PGD", ("attack_speed", "art"): "ART ProjectedGradientDescent"}


@pytest.fixture(scope="module")
def smoke(request, tmp_path_factory):
    """script -> its Smoke, each script run once per process. Alone (one pytest process), the scripts this
    session selected start at once, two at a time, in test order; under pytest-xdist (`make test`) each starts
    when its first test asks, on the worker that its xdist group (one per script) was given."""
    cache = tmp_path_factory.mktemp("rlab-cache")  # shared: MNIST-5k is decoded once
    pool = ThreadPoolExecutor(max_workers=2)
    started = {}

    def start(script: str):
        if script not in started:
            started[script] = pool.submit(run_script, script, tmp_path_factory.mktemp(script), cache)
        return started[script]

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for item in request.session.items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            if item.module is request.module and params.get("script"):
                start(params["script"])
    yield lambda script: start(script).result()
    pool.shutdown(cancel_futures=True)


# scripts whose --smoke another test file runs (next to the feature it measures), or that are not benchmarks
ELSEWHERE = {
    "cliff_walking": "tests/test_bench_value_based.py",
    "patch_vs_art": "tests/test_bench_patch.py",
    "sb3_zoo_train": "tests/test_sb3.py",
    "mutate": "a test-quality tool (make mutate), not a benchmark: its --smoke takes about a minute",
}


def test_every_bench_script_has_a_smoke_check():
    scripts = {p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(CHECKS) | set(ELSEWHERE), \
        "add the new bench script (with its --smoke) to CHECKS in tests/test_bench_smoke.py"
    for script, where in ELSEWHERE.items():
        assert not where.startswith("tests/") or f"bench\" / \"{script}.py" in open(where).read() \
            or f"{script}.py" in open(where).read(), f"{where} no longer runs {script}"


def on_one_worker(*args):
    """A pytest.param whose tests share one pytest-xdist worker with every other test of the same script (so
    the script runs once); sweep_speedup starts a local Ray instance and shares the "ray" worker instead."""
    group = "ray" if args[0] == "sweep_speedup" else f"bench-smoke-{args[0]}"
    return pytest.param(*args, marks=pytest.mark.xdist_group(group))


SMOKE_PARAMS = [on_one_worker(s) for s in CHECKS]


@pytest.mark.parametrize("script", SMOKE_PARAMS)
def test_smoke(smoke, script):
    CHECKS[script](smoke(script).ok())


@pytest.mark.parametrize("script, peer", [on_one_worker(*pair) for pair in PEERS])
def test_smoke_runs_the_optional_peer(smoke, script, peer):
    s = smoke(script).ok()
    if importlib.util.find_spec(peer) is None:
        assert f"peer {peer} is not installed" in s.stdout  # said so, and ran the lab's side
        pytest.skip(f"{peer} is not installed (make bench): bench/{script}.py --smoke ran without its rows")
    seconds, _, success = table_row(s.stdout, PEERS[script, peer])
    assert float(seconds) > 0 and 0 <= float(success) <= 1


@pytest.mark.parametrize("script", [on_one_worker("autoattack_vs_peers")])
def test_autoattack_bench_runs_torchattacks_beside_the_lab(smoke, script):
    s = smoke(script).ok()
    if importlib.util.find_spec("torchattacks") is None:
        assert "peer torchattacks is not installed" in s.stdout
        pytest.skip("torchattacks is not installed (make bench): its row is skipped")
    rows = {r["attack"]: r for r in rows_of(s.run_dir("autoattack_vs_peers__0") / "results.csv")}
    peer = rows["torchattacks APGD, APGD-T, Square (smoke budget)"]
    assert 0 <= fraction(peer["robust_accuracy"]) <= 1 and float(peer["seconds"]) > 0
    assert "time ratio" in s.stdout and "x |" in s.stdout  # the ratios against the peer are printed


def test_autoattack_bench_rows_take_turns_batch_by_batch_and_sum_their_costs():
    import torch

    sys.path.insert(0, str(BENCH))
    import autoattack_vs_peers as bench

    calls = []

    def runner(name, robust, fooled_by):
        def run(xb, yb):
            calls.append((name, len(xb)))
            return {"robust_accuracy": robust(xb), "seconds": 1.0, "cpu_seconds": 0.5, "grad_steps": len(xb),
                    "queries": "", "warnings": "peer's own" if name == "peer" else "", "fooled_by": fooled_by(xb)}
        return run

    x, y = torch.arange(10.0), torch.zeros(10)
    rows = bench.run_interleaved(
        [("lab", runner("lab", lambda xb: float((xb < 3).float().mean()),
                        lambda xb: f"apgd-ce {len(xb)}, square {int(xb[0] == 0)}")),
         ("peer", runner("peer", lambda xb: 1.0, lambda xb: ""))], x, y, eps=0.1, turn=4)
    assert calls == [("lab", 4), ("peer", 4), ("peer", 4), ("lab", 4), ("lab", 2), ("peer", 2)]  # order flipped
    lab, peer = rows
    assert (lab["attack"], peer["attack"]) == ("lab", "peer")
    assert lab["robust_accuracy"] == pytest.approx(0.3) and peer["robust_accuracy"] == 1.0  # weighted by images
    assert lab["seconds"] == 3.0 and lab["cpu_seconds"] == 1.5 and lab["grad_steps"] == 10
    assert lab["fooled_by"] == "apgd-ce 10, square 1"
    assert "1 of 10 images" in lab["warnings"]  # the masking flag is judged on the totals, not per batch
    assert peer["warnings"] == "peer's own"


def test_autoattack_bench_refuses_more_workers_than_threads(capsys):
    sys.path.insert(0, str(BENCH))
    import autoattack_vs_peers as bench

    with pytest.raises(SystemExit) as exit_:
        bench.main(["--smoke", "--workers", "2", "--threads", "1"])
    assert exit_.value.code == 2
    assert "--workers must lie in [1, --threads]" in capsys.readouterr().err
