"""`rlab demo`: the main job, on the offline default data, in one run folder.

    1. the lecture's ladder on CartPole-v1, a few seeds each: immediate reward (v0),
       reward-to-go (v1), discounted reward-to-go (v2), baselines (v3), actor-critic
       with a TD critic, A2C and PPO, and a short DQN rung -> ladder.png; and the
       critic for continuous actions: SAC (Haarnoja et al. 2018) on Pendulum-v1 -> continuous.png
    2. MNIST-5k classifiers: a CNN with standard training, and one with PGD
       adversarial training at eps 0.3 (Madry et al. 2018)
    3. the attack/defense benchmark on both (FGSM and PGD against no defense, blur,
       median, JPEG, bit depth and random resize-pad, non-adaptive and adaptive)
    4. beyond the eps-ball, on MNIST-5k: a universal adversarial patch (Brown et al.
       2017) against the standard model, and a BadNets backdoor (Gu et al. 2017)
       planted through 5% of the training set, found by activation clustering
       (Chen et al. 2018) and removed by retraining without the suspects
    5. report.md and index.html that show every plot and table (and an index.html
       beside each benchmark's report.md)

Everything lands under runs/demo/demo__<seed>__<time>/ (sub-runs in rl/,
classifier/, bench/ below it). `--quick` is the same pipeline on tiny budgets
(about a minute), which the tests run end to end.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlab.config import check, make_config, opt
from rlab.report import write_html_report
from rlab.runs import RunDir, atomic_write_text, read_json, use_runs_root, write_csv
from rlab.runtime import resolve_device

# (label, options) of the lecture's ladder, in the order the lecture climbs it.
LADDER: list[tuple[str, dict[str, Any]]] = [
    ("v0 immediate reward", {"algo": "vpg", "returns": "immediate", "baseline": "none"}),
    ("v1 reward-to-go", {"algo": "vpg", "returns": "reward-to-go", "baseline": "none"}),
    ("v2 discounted reward-to-go", {"algo": "vpg", "returns": "discounted", "baseline": "none"}),
    ("v3 + baseline (standardised)", {"algo": "vpg", "returns": "discounted", "baseline": "standardize"}),
    ("v3 + baseline V(s)", {"algo": "vpg", "returns": "discounted", "baseline": "value"}),
    ("actor-critic (TD critic)", {"algo": "ac", "critic": "td"}),
    ("A2C (GAE)", {"algo": "a2c"}),
    ("PPO-clip", {"algo": "ppo"}),
    # the other half of the lecture's critic: Q(s, a) picks the action. A short DQN rung (~5 s of CPU a seed):
    # a Polyak-averaged target and one gradient step per env step learn CartPole in 5k steps
    ("DQN (5k steps)", {"algo": "dqn", "steps": 5000, "hidden": [64, 64], "lr": 2e-3, "batch_size": 64,
                        "buffer_size": 10_000, "learning_starts": 500, "train_freq": 16, "gradient_steps": 16,
                        "tau": 0.05, "target_update_interval": 16, "exploration_fraction": 0.2,
                        "exploration_final_eps": 0.02}),
]
QUICK_LADDER = ["v0 immediate reward", "v2 discounted reward-to-go", "PPO-clip"]
PATCH_STEPS = 200  # Adam steps per patch size in the full demo (MNIST-5k, 1,000 training digits)
BACKDOOR_DETECTOR = "clustering"  # Chen et al. 2018: precision and recall 100% on MNIST-5k at 1% and 5% poison


@dataclass
class DemoConfig:
    quick: bool = opt(False, "tiny budgets (about a minute): the same pipeline, for tests and a first look")
    seeds: int | None = opt(None, "seeds per ladder variant (default: 3, quick: 1)")
    rl_steps: int | None = opt(None, "environment steps per ladder run (default: 30000, quick: 3000)")
    epochs: int | None = opt(None, "classifier epochs (default: 8 standard, 10 adversarial; quick: 1)")
    bench_n: int | None = opt(None, "test images in the attack benchmark (default: 300, quick: 60)")
    seed: int = opt(0, "first seed")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        resolve_device(self.device)  # a device that is not there fails before any run folder exists
        for name in ("seeds", "rl_steps", "epochs", "bench_n"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def budget(self) -> dict[str, Any]:
        quick = self.quick
        return {
            "seeds": self.seeds or (1 if quick else 3),
            "rl_steps": self.rl_steps or (3000 if quick else 30000),
            "epochs": self.epochs or (1 if quick else 8),
            "adv_epochs": self.epochs or (1 if quick else 10),
            "train_subset": 2000 if quick else 0,
            "bench_n": self.bench_n or (60 if quick else 300),
            "eps": [0.0, 0.3] if quick else [0.0, 0.1, 0.2, 0.3],
            "defenses": ["none", "jpeg", "resize-pad"] if quick else ["none", "blur", "median", "jpeg", "bitdepth", "resize-pad"],
            "eot_samples": 2 if quick else 4,
            "ladder": [v for v in LADDER if not quick or v[0] in QUICK_LADDER],
            # SAC's Pendulum-v1 preset passes -200 after ~2k steps (bench/rl_vs_sb3.py); ~20 s of CPU
            "sac_steps": 600 if quick else 3000,
            # beyond the eps-ball: one patch size per budget, the backdoor at one poison rate
            # MNIST-5k's CNN shrugs off small patches (towards 0: 0.3% at 5%, 1.3% at 10%, 15% at 20%, 500 steps)
            "patch_sizes": [0.1] if quick else [0.1, 0.2],
            "patch_steps": 20 if quick else PATCH_STEPS,
            "patch_fit": 200 if quick else 1000,
            "poison_rate": 0.05,
            # the trigger is learnt in the first epoch or two: at most 4 epochs (or --epochs, if fewer) keep it short
            "backdoor_epochs": min(4, self.epochs or (1 if quick else 8)),
        }


def _ladder(b: dict[str, Any], cfg: DemoConfig) -> list[Path]:
    from rlab.rl.trainer import TrainConfig, train

    paths: list[Path] = []
    for label, options in b["ladder"]:
        result = train(make_config(TrainConfig, **{"env": "CartPole-v1", "steps": b["rl_steps"], "seed": cfg.seed,
                                                   "seeds": b["seeds"], "variant": label, "device": cfg.device,
                                                   "eval_episodes": 5 if cfg.quick else 10, **options}))
        paths += result if isinstance(result, list) else [result]
    return paths


# Madry et al. 2018's PGD training at eps 0.3, in the recipe that fits 4,000 digits on a CPU
# (bench/adv_training_mnist.py): Wong et al. 2020's small net, Adam on a one-cycle schedule,
# eps ramped up over the first half so training does not collapse to one class.
ADVERSARIAL = {"model": "mnist_small", "adv": "pgd", "eps": 0.3, "adv_steps": 7, "adv_ramp": 0.5,
               "optimizer": "adam", "lr": 5e-3, "warmup": 0.5, "label_smoothing": 0.0, "weight_decay": 0.0,
               "augment": "none", "batch_size": 100}
ADVERSARIAL_LABEL = "adversarial (PGD-7, ε=0.3)"


def _continuous(b: dict[str, Any], cfg: DemoConfig) -> Path:
    """SAC with its Pendulum-v1 preset, one seed: the Q-critic that a policy climbs, for continuous actions."""
    from rlab.rl.trainer import TrainConfig, train

    return train(make_config(TrainConfig, algo="sac", env="Pendulum-v1", steps=b["sac_steps"], seed=cfg.seed,
                             variant="SAC", device=cfg.device, eval_episodes=5 if cfg.quick else 10))


def _classifiers(b: dict[str, Any], cfg: DemoConfig) -> dict[str, Path]:
    from rlab.vision.classifier import TrainConfig, train

    common = {"dataset": "mnist5k", "seed": cfg.seed, "device": cfg.device, "train_subset": b["train_subset"]}
    return {"standard": train(make_config(TrainConfig, epochs=b["epochs"], **common)),
            ADVERSARIAL_LABEL: train(make_config(TrainConfig, epochs=b["adv_epochs"], **ADVERSARIAL, **common))}


def _bench(classifier: Path, b: dict[str, Any], cfg: DemoConfig, defenses: list[str]) -> Path:
    from rlab.vision.attack_bench import BenchConfig, run

    return run(make_config(BenchConfig, classifier=str(classifier), attacks=["fgsm", "pgd"], defenses=defenses,
                           eps=b["eps"], n=b["bench_n"], eot_samples=b["eot_samples"], seed=cfg.seed,
                           device=cfg.device, gallery=8))


def _patch(classifier: Path, b: dict[str, Any], cfg: DemoConfig) -> Path:
    from rlab.vision.patch_bench import PatchBenchConfig, run

    return run(make_config(PatchBenchConfig, classifier=str(classifier), sizes=b["patch_sizes"], steps=b["patch_steps"],
                           n_fit=b["patch_fit"], n=b["bench_n"], seed=cfg.seed, device=cfg.device, gallery=6))


def _backdoor(b: dict[str, Any], cfg: DemoConfig) -> Path:
    """Clean, poisoned and retrained MNIST-5k models, each at the same budget (3 trainings)."""
    from rlab.vision.backdoor_bench import BackdoorBenchConfig, run

    return run(make_config(BackdoorBenchConfig, dataset="mnist5k", epochs=b["backdoor_epochs"], poison_rate=[b["poison_rate"]],
                           detectors=[BACKDOOR_DETECTOR], train_subset=b["train_subset"], seed=cfg.seed,
                           device=cfg.device, gallery=6))


def _training_comparison(benches: dict[str, Path], out_csv: Path) -> Path:
    """One results.csv where the 'defense' is how the model was trained (bare model, PGD/FGSM rows)."""
    rows = []
    for label, path in benches.items():
        with open(path / "results.csv", newline="") as f:
            for r in csv.DictReader(f):
                if r["defense"] == "none":
                    rows.append({**r, "defense": f"{label} training"})
    write_csv(out_csv, rows)
    return out_csv


def run(cfg: DemoConfig) -> Path:
    start = time.perf_counter()
    b = cfg.budget()
    demo = RunDir.create("demo", "quick" if cfg.quick else "demo", cfg.seed, cfg)
    root = demo.path
    timings: dict[str, float] = {}
    from rlab.plots import plot_returns, plot_robustness

    with use_runs_root(root):
        t = time.perf_counter()
        ladder_runs = _ladder(b, cfg)
        plot_returns(ladder_runs, root / "ladder.png", window=3,
                     title=f"CartPole-v1: the lecture's ladder, mean ± 1 std over {b['seeds']} seed(s)")
        timings["rl_ladder"] = time.perf_counter() - t

        t = time.perf_counter()
        continuous = _continuous(b, cfg)
        plot_returns([continuous], root / "continuous.png", window=3,
                     title=f"Pendulum-v1: SAC, {b['sac_steps']} environment steps, seed {cfg.seed}")
        timings["continuous"] = time.perf_counter() - t

        t = time.perf_counter()
        classifiers = _classifiers(b, cfg)
        timings["classifiers"] = time.perf_counter() - t

        t = time.perf_counter()
        benches = {"standard": _bench(classifiers["standard"], b, cfg, b["defenses"]),
                   "adversarial": _bench(classifiers[ADVERSARIAL_LABEL], b, cfg, ["none"])}
        comparison = _training_comparison(benches, root / "training_comparison.csv")
        plot_robustness(comparison, root / "training_comparison.png",
                        title="MNIST-5k: standard vs adversarial (PGD) training, bare model")
        timings["attack_benchmark"] = time.perf_counter() - t

        t = time.perf_counter()
        beyond = {"patch": _patch(classifiers["standard"], b, cfg), "backdoor": _backdoor(b, cfg)}
        timings["patch_and_backdoor"] = time.perf_counter() - t

    summary = _summary(ladder_runs, continuous, classifiers, benches, beyond, timings, time.perf_counter() - start)
    demo.write_summary(summary)
    _write_report(root, b, ladder_runs, classifiers, benches, beyond, summary)
    print(f"\nrlab demo finished in {summary['wall_seconds']:.0f} s. Report: {root / 'report.md'} and {root / 'index.html'}")
    return root


def _summary(ladder_runs, continuous, classifiers, benches, beyond, timings, wall) -> dict[str, Any]:
    ladder: dict[str, list[float]] = {}
    for p in ladder_runs:
        s = read_json(p / "summary.json")
        ladder.setdefault(s.get("variant") or p.name, []).append(s["eval/mean_return"])
    out: dict[str, Any] = {"wall_seconds": wall, "seconds": timings,
                           "ladder/eval_mean_return": {k: sum(v) / len(v) for k, v in ladder.items()},
                           "continuous/sac/eval_mean_return": read_json(continuous / "summary.json")["eval/mean_return"]}
    for label, p in classifiers.items():
        out[f"classifier/{label}/test_accuracy"] = read_json(p / "summary.json")["test/accuracy"]
    for label, p in benches.items():
        with open(p / "results.csv", newline="") as f:
            for r in csv.DictReader(f):
                mode = "adaptive" if r["adaptive"] == "True" else "non-adaptive"
                out[f"bench/{label}/{r['attack']}/{r['defense']}/{mode}/eps={r['eps']}"] = float(r["robust_accuracy"])
    for key, value in read_json(beyond["patch"] / "summary.json").items():
        if key.startswith("targeted_success/"):
            out[f"patch/{key}"] = value
    for key, value in read_json(beyond["backdoor"] / "summary.json").items():
        if key.startswith(("clean_accuracy/", "attack_success_rate/", "precision/", "recall/")):
            out[f"backdoor/{key}"] = value
    return out


def _rel(root: Path, p: Path) -> str:
    return str(p.relative_to(root))


def _tables(report_md: Path) -> list[str]:
    """The pipe tables of a benchmark's report.md, a blank line after each."""
    out: list[str] = []
    for line in report_md.read_text().split("\n"):
        if line.startswith("|"):
            out.append(line)
        elif out and out[-1] != "":
            out.append("")
    return out


def _bench_section(root: Path, heading: str, run: Path, pngs: tuple[str, ...], intro: str) -> list[str]:
    """A benchmark's tables (from its report.md) and figures under a heading, with a paragraph before them."""
    return ([f"### {heading} (`{_rel(root, run)}`)", "", intro, ""] + _tables(run / "report.md")
            + [f"![{heading}: {png[:-4]}]({_rel(root, run / png)})" for png in pngs if (run / png).is_file()] + [""])


def _write_report(root: Path, b, ladder_runs, classifiers, benches, beyond, summary) -> None:
    md = ["# rlab demo report", "",
          f"Wall time: {summary['wall_seconds']:.0f} s "
          f"({', '.join(f'{k}: {v:.0f} s' for k, v in summary['seconds'].items())}).", "",
          "## 1. The policy-gradient ladder on CartPole-v1 (and a DQN rung)", "",
          f"{b['rl_steps']} environment steps per run (DQN: 5,000), {b['seeds']} seed(s) per variant; "
          "return of a deterministic evaluation at the end (mean over seeds):", "",
          "| variant | eval return |", "|---|---|"]
    md += [f"| {k} | {v:.1f} |" for k, v in summary["ladder/eval_mean_return"].items()]
    md += ["", "![ladder](ladder.png)", "", "### Continuous actions: SAC on Pendulum-v1", "",
           f"The critic as Q(s, a) for a continuous action: SAC's squashed-Gaussian actor climbs twin critics "
           f"({b['sac_steps']} environment steps, its Pendulum-v1 preset). Deterministic evaluation: "
           f"{summary['continuous/sac/eval_mean_return']:.0f} (a random policy: about -1,200; solved: above -200).", "",
           "![continuous](continuous.png)", "", "## 2. MNIST-5k classifiers", "", "| training | test accuracy (1,000 digits) |",
           "|---|---|"]
    md += [f"| {label} | {100 * summary[f'classifier/{label}/test_accuracy']:.1f}% |" for label in classifiers]
    md += [""] + [f"![{label} learning curve]({_rel(root, p / 'learning_curve.png')})" for label, p in classifiers.items()
                  if (p / "learning_curve.png").is_file()]
    md += ["", "## 3. Attacks and defenses", ""]
    for label, p in benches.items():
        report = (p / "report.md").read_text().split("\n")
        start = next(i for i, line in enumerate(report) if line.startswith("## Headline"))
        end = next(i for i, line in enumerate(report) if line.startswith("![robustness]"))
        tables = [f"##{line}" if line.startswith("## ") else line for line in report[start:end]]
        md += [f"### {label} model (`{_rel(root, p)}`)", ""] + tables
        for png in ("robustness.png", "gallery.png"):
            if (p / png).is_file():
                md.append(f"![{label} {png[:-4]}]({_rel(root, p / png)})")
        md.append("")
    md += ["### Standard vs adversarial training", "", "![training comparison](training_comparison.png)", "",
           "A defense is judged by its worst case over every attack and both attackers (the headline tables): "
           "an attacker who knows the defense differentiates through it (BPDA / EOT, Athalye et al. 2018) and "
           "usually wins; where the adaptive figure reads higher (†), the adaptive attack was the weaker one, "
           "not the defense stronger.", ""]
    patch, backdoor = beyond["patch"], beyond["backdoor"]
    md += ["## 4. Beyond the eps-ball: an adversarial patch and a backdoor (MNIST-5k)", ""]
    md += _bench_section(root, "Adversarial patch on the standard model", patch, ("success.png", "gallery.png"),
                         f"Brown et al. 2017: one universal patch per area, trained with expectation over transformations "
                         f"({b['patch_steps']} Adam steps on {b['patch_fit']} training digits), pasted at a random place "
                         f"and rotation on {b['bench_n']} held-out digits of the other classes. Budget: the patch area; "
                         "controls: a uniform-noise patch of the same size, and no patch.")
    md += _bench_section(root, "BadNets backdoor, found and removed", backdoor, ("backdoor.png", "gallery.png"),
                         f"Gu et al. 2017: {100 * b['poison_rate']:g}% of the training digits get a trigger and the "
                         "label 0 (budget: the poison rate); the clean model, the poisoned one, and one retrained "
                         "without the samples that activation clustering (Chen et al. 2018) flags in the poisoned "
                         "model, each trained like the standard model. Attack success: triggered test digits of other "
                         "classes called 0.")
    with open(backdoor / "results.csv", newline="") as f:
        curves = [(f"{r['model']} {r['detector']}".strip(), Path(r["run"]) / "learning_curve.png") for r in csv.DictReader(f)]
    md += ["Learning curves of the three models:", ""]
    md += [f"![{label} learning curve]({_rel(root, png)})" for label, png in curves if png.is_file()]
    md.append("")
    atomic_write_text(root / "report.md", "\n".join(md))
    write_html_report(root, "rlab demo")
    for label, p in benches.items():  # each benchmark's own report, as a page of its own
        write_html_report(p, f"rlab bench attacks: {label} model")
    write_html_report(patch, "rlab bench patch: standard model")
    write_html_report(backdoor, "rlab bench backdoor: MNIST-5k")
