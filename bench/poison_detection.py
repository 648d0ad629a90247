"""Poison detection: ours (defenses.poison_detection) beside ART's SpectralSignatureDefense and ActivationDefence.

    .venv/bin/python bench/poison_detection.py --classifier runs/classifier/<run trained with --poison badnets>
    .venv/bin/python bench/poison_detection.py --smoke    # trains a tiny poisoned MNIST-5k model first (seconds)

The victim is a classifier run folder of `rlab classifier train --poison badnets`;
its training set is rebuilt exactly as it trained on (same subset draw, same
poisoned images), so precision and recall are against the planted poison. Every
detector reads the same representation, the model's penultimate activations (the
input of its last linear layer; ART gets a wrapper whose one layer returns them),
and flags samples per training label:

    ours spectral        separation test per label, then 1.5x the smaller hump removed
    ours clustering      PCA-10, 2-means, smaller cluster if relative size <= 35% and silhouette >= 0.35
    ART spectral         SpectralSignatureDefense: the top eps_multiplier (1.5) x expected_pp_poison
                         (--art-expected-share, ART's default 0.33) of every label's scores
    ART clustering       ActivationDefence(nb_clusters=2, nb_dims=10, reduce="PCA"), cluster_analysis
                         "smaller" (ART's default: the smaller cluster of every label)

Detection only (retraining is `rlab bench backdoor` / `--remove-suspects`). Wall
seconds include each side's own forward pass over the training set. ART is a
benchmark-only dependency (`make bench`). Writes results.csv, report.md, summary.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _smoke import parse_args, peer_available  # noqa: E402
from defenses.poison_detection import detect_poison, penultimate_features  # noqa: E402
from rlab.runs import RunDir, atomic_write_text, write_csv  # noqa: E402
from rlab.runtime import seed_everything, set_threads  # noqa: E402


class Penultimate(nn.Module):
    """The model's penultimate activations as a module's output (what ART reads as the last layer)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return penultimate_features(self.model, x, batch_size=len(x))


def score(name: str, suspects: np.ndarray, poisoned: torch.Tensor, seconds: float) -> dict:
    suspects = torch.as_tensor(suspects, dtype=torch.bool)
    hits, flagged, planted = int((suspects & poisoned).sum()), int(suspects.sum()), int(poisoned.sum())
    return {"detector": name, "flagged": flagged, "precision": hits / flagged if flagged else "",
            "recall": hits / planted, "seconds": round(seconds, 2)}


def ours(model, data, poisoned: torch.Tensor) -> list[dict]:
    from rlab.vision.classifier import training_features

    start = time.perf_counter()
    features = training_features(model, data, torch.device("cpu"))
    forward = time.perf_counter() - start
    rows = []
    for method in ("spectral", "clustering"):
        start = time.perf_counter()
        found = detect_poison(features, data.labels, method)
        rows.append(score(f"ours {method}", found.suspects.numpy(), poisoned, forward + time.perf_counter() - start))
    return rows


def art(model, data, poisoned: torch.Tensor, expected_share: float) -> list[dict]:
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        width = penultimate_features(model, data.float(slice(0, 2))).shape[1]
    classes = len(data.classes)
    wrapper = nn.Sequential(Penultimate(model))
    classifier = PyTorchClassifier(model=wrapper, loss=nn.CrossEntropyLoss(), input_shape=tuple(data.images.shape[1:]),
                                   nb_classes=classes, clip_values=(0.0, 1.0))
    x = data.float().numpy()
    y = np.eye(classes, dtype=np.float32)[data.labels.numpy()]
    rows = []
    start = time.perf_counter()
    spectral = SpectralSignatureDefense(classifier, x, y, batch_size=500, eps_multiplier=1.5,
                                        expected_pp_poison=expected_share)
    _, is_clean = spectral.detect_poison()
    rows.append(score("ART spectral", np.asarray(is_clean) == 0, poisoned, time.perf_counter() - start))
    start = time.perf_counter()
    clustering = ActivationDefence(classifier, x, y)
    _, is_clean = clustering.detect_poison(nb_clusters=2, nb_dims=min(10, width), reduce="PCA")
    rows.append(score("ART clustering", np.asarray(is_clean) == 0, poisoned, time.perf_counter() - start))
    return rows


def smoke_victim(root: Path) -> Path:
    """A poisoned mnist_small trained here: 600 digits, 10% poison, 2 epochs."""
    from rlab.runs import use_runs_root
    from rlab.vision.classifier import TrainConfig, train

    with use_runs_root(root):
        return train(TrainConfig(dataset="mnist5k", model="mnist_small", train_subset=600, epochs=2, batch_size=50,
                                 poison="badnets", poison_rate=0.1, threads=1, progress=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", help="run folder of a classifier trained with --poison badnets")
    parser.add_argument("--art-expected-share", type=float, default=0.33,
                        help="ART spectral's expected_pp_poison: the poisoned share it assumes of every label")
    parser.add_argument("--threads", type=int, default=1)
    args = parse_args(parser, {}, argv)
    if not args.smoke and not args.classifier:
        parser.error("give --classifier RUN_DIR (or --smoke)")
    set_threads(args.threads, "cnn")
    from rlab.vision.classifier import load_classifier, saved_train_config, training_set

    if args.smoke:
        args.classifier = str(smoke_victim(RunDir.create("bench", "poison_detection_victim", 0, vars(args)).path))
    cfg = saved_train_config(args.classifier)
    seed_everything(cfg.seed)
    data, badnets, poisoned = training_set(cfg)
    if badnets is None:
        parser.error(f"{args.classifier} was trained without --poison badnets: there is no planted poison to find")
    model, options = load_classifier(args.classifier, "cpu")
    rows = ours(model, data, poisoned)
    if peer_available("art", "make bench"):
        rows += art(model, data, poisoned, args.art_expected_share)
    for r in rows:
        r["poison_rate"] = badnets.rate
    write_report(RunDir.create("bench", "poison_detection", cfg.seed, vars(args)), rows, badnets, options, len(data))


def write_report(run: RunDir, rows: list[dict], badnets, options: dict, n: int) -> None:
    """results.csv, report.md (the table and time ratios against ART) and summary.json; prints the table."""
    def pct(v) -> str:
        return f"{100 * v:.1f}%" if v != "" else "–"

    lines = [f"# Poison detection: ours vs ART on {options['model']} / {options['dataset']}", "",
             f"BadNets at poison rate {100 * badnets.rate:g}% ({round(badnets.rate * n)} of {n} training images), "
             f"trigger `{badnets.trigger.spec}`, target {badnets.target}; every detector reads the penultimate "
             "activations of the same poisoned model.", "",
             "| poison rate | detector | flagged | precision | recall | wall s | time ratio vs ART |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        kind = r["detector"].split()[-1]
        peer = next((p for p in rows if p["detector"] == f"ART {kind}"), None)
        ratio = f"{r['seconds'] / peer['seconds']:.2f}x" if peer and r["detector"].startswith("ours") else ""
        lines.append(f"| {100 * r['poison_rate']:g}% | {r['detector']} | {r['flagged']} | {pct(r['precision'])} | "
                     f"{pct(r['recall'])} | {r['seconds']:.1f} | {ratio} |")
    report = "\n".join(lines) + "\n"
    write_csv(run.path / "results.csv", rows, ["poison_rate", "detector", "flagged", "precision", "recall", "seconds"])
    atomic_write_text(run.path / "report.md", report)
    run.write_summary({f"{r['detector']}/{k}": r[k] for r in rows for k in ("precision", "recall", "seconds")})
    print(report, end="")
    print(run.path)


if __name__ == "__main__":
    main()
