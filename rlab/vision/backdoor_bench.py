"""`rlab bench backdoor`: BadNets poisoning, its detection, and retraining without the suspects.

    rlab bench backdoor --dataset mnist5k --poison-rate 0.01,0.05 --detectors spectral,clustering

For one dataset and model it trains, with the same seed and options:

    clean       no poison: the clean accuracy to stay within 1 point of, and the
                baseline attack success (a clean model's rate of calling a
                triggered image of another class the target)
    poisoned    per poison rate: BadNets (Gu et al. 2017) on that share of the
                training set (`rlab classifier train --poison badnets`)
    retrained   per poison rate and detector: the poisoned model's penultimate
                activations flag suspects (spectral signatures, Tran et al. 2018;
                activation clustering, Chen et al. 2018), and a model is trained
                without them (`--remove-suspects POISONED_RUN --detector D`)

Threat model: the budget is the poison rate (share of the training set), and
it heads every table. Writes one run folder: results.csv (one row per trained
model), report.md, backdoor.png (clean accuracy and attack success against the
poison rate) and gallery.png (triggered test images with each model's answer);
the classifier runs themselves land under runs/classifier/.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attacks.poisoning import BadNets, Trigger, attack_success_rate
from defenses.poison_detection import DETECTORS
from rlab.config import check, opt
from rlab.errors import UserError
from rlab.runs import RunDir, atomic_write_text
from rlab.runtime import resolve_device, set_threads
from rlab.vision.classifier import TrainConfig, check_dataset_name, load_classifier, train
from rlab.vision.data import load_dataset
from rlab.vision.models import MODEL_NAMES

RESULT_COLUMNS = ["poison_rate", "model", "detector", "clean_accuracy", "attack_success_rate", "num_poisoned",
                  "num_suspects", "precision", "recall", "poisoned_left", "train_seconds", "run"]


@dataclass
class BackdoorBenchConfig:
    dataset: str = opt("mnist5k", "dataset (as for rlab classifier train)")
    model: str = opt("auto", "model name (auto: mnist_cnn for 1 channel, fastnet for RGB)", choices=["auto", *MODEL_NAMES])
    epochs: int = opt(10, "training epochs of every model")
    poison_rate: list[float] = opt([BadNets.rate], "poison budgets: shares of the training set poisoned, e.g. 0.01,0.05")
    target: int = opt(BadNets.target, "the backdoor's target class index")
    trigger: str = opt(Trigger().spec, "trigger PATTERN[:SIZE[:CORNER]], pattern square|checker, corner br|bl|tr|tl")
    detectors: list[str] = opt([DETECTORS[0]], f"poison detectors to retrain with ({', '.join(DETECTORS)})")
    batch_size: int = opt(256, "training minibatch size")
    train_subset: int = opt(0, "train on the first N shuffled training images only (0: all)")
    gallery: int = opt(8, "triggered test images in the gallery (0: none)")
    data_dir: str | None = opt(None, "folder holding the dataset files")
    seed: int = opt(0, "seed of every model and of the poison draw")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    threads: int = opt(0, "torch threads (0: every core up to 8)")

    def __post_init__(self) -> None:
        check_dataset_name(self.dataset)
        check(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        for r in self.poison_rate:
            check(0 < r < 1, f"--poison-rate values are shares of the training set, in (0, 1); got {r}")
        check(self.target >= 0, f"--target must be a class index >= 0, got {self.target}")
        try:
            Trigger.parse(self.trigger)
        except ValueError as e:
            raise UserError(f"--trigger: {e}") from None
        for d in self.detectors:
            check(d in DETECTORS, f"--detectors: {d!r} is not a detector; choose from {', '.join(DETECTORS)}")
        check(self.gallery >= 0, f"--gallery must be >= 0, got {self.gallery}")
        self.poison_rate = sorted(set(self.poison_rate))

    def train_config(self, **extra: Any) -> TrainConfig:
        return TrainConfig(dataset=self.dataset, model=self.model, epochs=self.epochs, batch_size=self.batch_size,
                           train_subset=self.train_subset, data_dir=self.data_dir, seed=self.seed, device=self.device,
                           threads=self.threads, **extra)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _row(rate: float, model: str, run: Path, detector: str = "", asr: float | None = None) -> dict[str, Any]:
    s = _summary(run)
    asr = s.get("backdoor/attack_success_rate") if asr is None else asr
    return {"poison_rate": rate, "model": model, "detector": detector,
            "clean_accuracy": round(s["test/accuracy"], 4), "attack_success_rate": round(asr, 4),
            "num_poisoned": s.get("backdoor/num_poisoned", 0), "num_suspects": s.get("detection/num_suspects", ""),
            "precision": round(s["detection/precision"], 4) if s.get("detection/num_suspects") else "",
            "recall": round(s["detection/recall"], 4) if "detection/recall" in s else "",
            "poisoned_left": s.get("backdoor/num_poisoned_trained_on", 0) if detector else s.get("backdoor/num_poisoned", 0),
            "train_seconds": round(s["train_seconds"], 1), "run": str(run)}


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def report_table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one line per trained model; the poison rate is the first column."""
    lines = ["| poison rate | model | detector | clean acc. (%) | Δ vs clean (points) | attack success (%) | "
             "poisoned | flagged | precision | recall | poisoned left |", "|" + "---|" * 11]
    clean = next(r["clean_accuracy"] for r in rows if r["model"] == "clean")

    def pct(v: Any) -> str:
        return f"{100 * v:.1f}" if v != "" else "–"

    for r in rows:
        lines.append(f"| {100 * r['poison_rate']:g}% | {r['model']} | {r['detector'] or '–'} | {pct(r['clean_accuracy'])} | "
                     f"{100 * (r['clean_accuracy'] - clean):+.1f} | {pct(r['attack_success_rate'])} | {r['num_poisoned']} | "
                     f"{r['num_suspects'] if r['num_suspects'] != '' else '–'} | {pct(r['precision'])} | "
                     f"{pct(r['recall'])} | {r['poisoned_left']} |")
    return "\n".join(lines)


def plot_backdoor(rows: list[dict[str, Any]], out: Path, title: str) -> Path:
    """Clean accuracy and attack success (%) against the poison rate, one line per model kind."""
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    fig, (ax_acc, ax_asr) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    kinds = list(dict.fromkeys((r["model"], r["detector"]) for r in rows))
    for model, detector in kinds:
        pts = sorted((r["poison_rate"], r["clean_accuracy"], r["attack_success_rate"]) for r in rows
                     if (r["model"], r["detector"]) == (model, detector))
        label = model + (f" ({detector})" if detector else "")
        style = dict(marker="o", ms=4, label=label)
        if model == "clean":
            ax_acc.axhline(100 * pts[0][1], color="k", lw=1, ls=":", label="clean model")
            ax_asr.axhline(100 * pts[0][2], color="k", lw=1, ls=":", label="clean model")
            continue
        ax_acc.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], **style)
        ax_asr.plot([100 * p[0] for p in pts], [100 * p[2] for p in pts], **style)
    ax_acc.set(xlabel="poison rate (% of the training set)", ylabel="clean test accuracy (%)", title="clean accuracy")
    ax_asr.set(xlabel="poison rate (% of the training set)", ylabel="attack success (%)", ylim=(-2, 102),
               title="triggered test images of other classes → target")
    for ax in (ax_acc, ax_asr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def plot_gallery(models: list[tuple[str, torch.nn.Module]], x: torch.Tensor, y: torch.Tensor, classes: list[str],
                 trigger: Trigger, target: int, k: int, out: Path) -> Path:
    """Triggered test images of classes other than the target, titled with each model's prediction."""
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    others = torch.nonzero(y != target).flatten()
    picks = others[torch.linspace(0, len(others) - 1, min(k, len(others))).long()]
    x_triggered = trigger.stamp(x[picks])
    fig, axes = plt.subplots(1, len(picks), figsize=(1.55 * len(picks) + 0.4, 2.1 + 0.2 * len(models)), dpi=120,
                             squeeze=False)
    with torch.no_grad():
        predictions = [(name, m(x_triggered).argmax(1)) for name, m in models]
    for i, ax in enumerate(axes[0]):
        img = x_triggered[i].permute(1, 2, 0).cpu().numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        lines = [f"true {classes[y[picks[i]]]}"] + [f"{name}: {classes[p[i]]}" for name, p in predictions]
        ax.set_title("\n".join(lines), fontsize=7)
    fig.suptitle(f"Triggered test images ({trigger.spec}, target {classes[target]})", fontsize=9)
    return save_figure(fig, out)


def run(cfg: BackdoorBenchConfig) -> Path:
    set_threads(cfg.threads, "cnn")
    device = resolve_device(cfg.device)
    trigger = Trigger.parse(cfg.trigger)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    if cfg.target >= len(test.classes):
        raise UserError(f"--target {cfg.target} is not a class of {cfg.dataset}: give an index in 0..{len(test.classes) - 1}")
    start = time.perf_counter()
    x_test, y_test = test.float().to(device), test.labels.to(device)
    bench = RunDir.create("bench", f"backdoor__{cfg.dataset.replace(':', '-')}", cfg.seed, cfg, device)

    clean_run = train(cfg.train_config())
    clean_model, options = load_classifier(clean_run, device)
    rows = [_row(0.0, "clean", clean_run, asr=attack_success_rate(clean_model, x_test, y_test, trigger, cfg.target))]
    poison = {"poison": "badnets", "target": cfg.target, "trigger": cfg.trigger}
    for rate in cfg.poison_rate:
        poisoned_run = train(cfg.train_config(poison_rate=rate, **poison))
        rows.append(_row(rate, "poisoned", poisoned_run))
        gallery_runs = {f"poisoned {100 * rate:g}%": poisoned_run}  # the gallery shows the largest rate's models
        for detector in cfg.detectors:
            retrained = train(cfg.train_config(poison_rate=rate, **poison, remove_suspects=str(poisoned_run),
                                               detector=detector))
            rows.append(_row(rate, "retrained", retrained, detector))
            gallery_runs[f"retrained ({detector})"] = retrained

    write_results(bench.path / "results.csv", rows)
    title = f"BadNets on {cfg.dataset} / {options['model']}: trigger {trigger.spec}, target {test.classes[cfg.target]}"
    plot_backdoor(rows, bench.path / "backdoor.png", title)
    report = [f"# Backdoor benchmark: BadNets on {cfg.dataset} / {options['model']}", "",
              f"Trigger `{trigger.spec}` stamped on the poisoned share of the training set, relabelled to class "
              f"{cfg.target} ({test.classes[cfg.target]}); {cfg.epochs} epochs, seed {cfg.seed}. Budget: the poison "
              f"rate (share of the {_summary(clean_run)['num_train']} training images). Clean accuracy on the "
              f"{len(test)} clean test images; attack success on the "
              f"{int((test.labels != cfg.target).sum())} test images of other classes with the trigger stamped. "
              "Detectors read the poisoned model's penultimate activations per label; precision and recall are "
              "against the planted poison; 'poisoned left' is what the retrained model still trained on.", "",
              report_table(rows), "", "![backdoor](backdoor.png)", ""]
    if cfg.gallery:
        models = [("clean", clean_model)] + [(name, load_classifier(run, device)[0]) for name, run in gallery_runs.items()]
        plot_gallery(models, x_test, y_test, test.classes, trigger, cfg.target, cfg.gallery, bench.path / "gallery.png")
        report += [f"## Gallery (poison rate {100 * cfg.poison_rate[-1]:g}%)", "", "![gallery](gallery.png)", ""]
    atomic_write_text(bench.path / "report.md", "\n".join(report))
    summary: dict[str, Any] = {"wall_seconds": time.perf_counter() - start, "rows": len(rows)}
    for r in rows:
        key = f"{r['model']}{'/' + r['detector'] if r['detector'] else ''}/{r['poison_rate']:g}"
        summary[f"clean_accuracy/{key}"] = r["clean_accuracy"]
        summary[f"attack_success_rate/{key}"] = r["attack_success_rate"]
        if r["precision"] != "":
            summary[f"precision/{key}"], summary[f"recall/{key}"] = r["precision"], r["recall"]
    bench.write_summary(summary)
    return bench.path
