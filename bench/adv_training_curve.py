"""Accuracy against training time of an adversarially trained classifier: clean and under `auto`, per kept epoch.

    .venv/bin/python bench/adv_training_curve.py --classifier runs/classifier/<run> [--n 300] [--version fast]
    .venv/bin/python bench/adv_training_curve.py --smoke    # seconds: a tiny run of 2 epochs, 20 digits

The victim is a run of `rlab classifier train ... --keep-checkpoints`, which keeps the
model after every epoch (checkpoints/epoch_N.pt, with the training wall and CPU seconds
spent up to it). For each kept epoch (or `--epochs 1,3,5`) this evaluates, on `--n` test
images (the seeded draw of bench/autoattack_vs_peers.py, so the last epoch's figure is
comparable with that table): clean accuracy, robust accuracy under the lab's `auto`
ensemble (attacks.AutoAttack, `--version`, default fast: APGD-CE 25, APGD-T 3 x 25,
Square 500) at L-inf `--eps`, and under PGD-20 (2.5 eps / 20 steps, random start),
whose gap to `auto` shows masking growing or not; beside them the clean accuracy on
the whole test set that training logged (metrics.csv, in the run's --precision).

The points of one run lie on one learning-rate schedule: under the one-cycle schedule
the rate has annealed only at the last epoch, so an earlier point is below what a run
of that length would reach (its own schedule would have annealed). The curve answers
"where does more training stop paying", not "what does a shorter run give".
Results: runs/bench/adv_training_curve__<seed>__<time>/results.csv, report.md, curve.png.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import attacks
from _smoke import parse_args
from rlab.runs import RunDir, atomic_write_text, write_csv
from rlab.runtime import seed_everything, set_threads


def smoke_run(root: Path) -> Path:
    """A 2-epoch fast-adversarially-trained mnist_small on 500 MNIST-5k digits, every epoch kept."""
    import os

    from rlab.vision.classifier import TrainConfig, train

    os.environ["RLAB_RUNS"] = str(root)
    return train(TrainConfig(dataset="mnist5k", model="mnist_small", epochs=2, train_subset=500, batch_size=50,
                             adv="fast", eps=0.1, keep_checkpoints=True, threads=1, progress=False))


def test_images(dataset: str, data_dir: str | None, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n of the seeded permutation of the test split (bench/autoattack_vs_peers.py's draw)."""
    from rlab.vision.data import load_dataset

    data = load_dataset(dataset, "test", data_dir)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data.float(pick), data.labels[pick]


def evaluate_epoch(run_dir: str, epoch: int, x: torch.Tensor, y: torch.Tensor, eps: float, auto, pgd,
                   batch_size: int, channels_last: bool) -> dict:
    from rlab.vision.classifier import load_classifier

    model, _ = load_classifier(run_dir, "cpu", epoch=epoch)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = RunDir.open(run_dir).load_checkpoint(f"epoch_{epoch}.pt")
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    row = {"epoch": epoch, "train_seconds": state.get("train_seconds"), "train_cpu_seconds": state.get("cpu_seconds"),
           "clean": clean}
    for name, attack in (("auto", auto), ("pgd20", pgd)):
        cpu = time.process_time()
        result = attacks.robust_accuracy(model, attack, x, y, [eps], batch_size=batch_size)
        row.update({name: result.accuracy[0], f"{name}_seconds": result.seconds,
                    f"{name}_cpu_seconds": time.process_time() - cpu})
        if name == "auto" and result.warnings:
            row["warnings"] = " / ".join(result.warnings)
    return row


def plot_curve(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    minutes = [float(r["train_cpu_seconds"] or r["train_seconds"]) / 60 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if all(r["test_accuracy_full"] is not None for r in rows):
        ax.plot(minutes, [100 * r["test_accuracy_full"] for r in rows], "o-", label="clean, whole test set")
    ax.plot(minutes, [100 * r["clean"] for r in rows], "s--", label="clean, attacked images")
    ax.plot(minutes, [100 * r["pgd20"] for r in rows], "^--", label="PGD-20")
    ax.plot(minutes, [100 * r["auto"] for r in rows], "v-", label="auto (worst case of the ensemble)")
    for m, r in zip(minutes, rows):
        ax.annotate(str(r["epoch"]), (m, 100 * r["auto"]), textcoords="offset points", xytext=(0, -12), fontsize=7)
    ax.set(xlabel="training CPU minutes (epoch numbers at the auto points)", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", help="run folder of `rlab classifier train ... --keep-checkpoints`")
    parser.add_argument("--epochs", default="", help="comma-separated kept epochs to evaluate (default: all)")
    parser.add_argument("--n", type=int, default=300, help="number of test images (a seeded draw)")
    parser.add_argument("--eps", type=float, default=None, help="L-inf radius (default: the run's training eps)")
    parser.add_argument("--version", default="fast", choices=["fast", "standard", "reference"],
                        help="budget of the lab's auto ensemble")
    parser.add_argument("--channels-last", action="store_true",
                        help="run the model on channels-last (NHWC) tensors: the same fp32 figures, faster on CPU")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser, dict(n=20), argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    set_threads(args.threads, "cnn")
    seed_everything(args.seed)
    tmp = None
    if args.smoke:
        tmp = tempfile.TemporaryDirectory()
        args.classifier = str(smoke_run(Path(tmp.name)))
    if not args.classifier:
        parser.error("give --classifier RUN_DIR (or --smoke)")
    from rlab.errors import UserError
    from rlab.vision.classifier import kept_epochs

    kept = kept_epochs(args.classifier)
    try:
        wanted = [int(e) for e in args.epochs.split(",") if e] or kept
    except ValueError:
        parser.error(f"--epochs takes comma-separated epoch numbers, got {args.epochs!r}")
    missing = sorted(set(wanted) - set(kept))
    if not kept or missing:
        raise UserError(f"{args.classifier} kept no checkpoint of epoch(s) {', '.join(map(str, missing or wanted))} "
                        f"({'kept: ' + ', '.join(map(str, kept)) if kept else 'train it with --keep-checkpoints'})")
    run = RunDir.open(args.classifier)
    options = run.config["options"]
    x, y = test_images(options["dataset"], options.get("data_dir"), args.n, args.seed)
    eps = args.eps if args.eps is not None else float(options.get("eps") or 0)
    if not 0 < eps <= 1:
        parser.error(f"{args.classifier} was not adversarially trained: give the radius with --eps (in (0, 1])")
    if args.smoke:
        auto = attacks.AutoAttack(steps=5, targets=1, queries=20, seed=args.seed)
        pgd = attacks.PGD(steps=2, rel_stepsize=1.25, seed=args.seed)
    else:
        auto = attacks.AutoAttack(version=args.version, seed=args.seed)
        pgd = attacks.PGD(steps=20, rel_stepsize=2.5 / 20, seed=args.seed)
    logged = {int(r["epoch"]): r for r in run.metrics}
    rows = []
    for epoch in sorted(wanted):
        row = evaluate_epoch(args.classifier, epoch, x, y, eps, auto, pgd, args.batch_size, args.channels_last)
        full = logged.get(epoch, {}).get("test/accuracy")
        row["test_accuracy_full"] = float(full) if full not in (None, "") else None
        rows.append(row)
        print(f"epoch {epoch}: clean {100 * row['clean']:.1f}% auto {100 * row['auto']:.1f}% "
              f"PGD-20 {100 * row['pgd20']:.1f}% ({row['auto_cpu_seconds']:.0f} CPU s)", flush=True)
    write_report(RunDir.create("bench", "adv_training_curve", args.seed, vars(args)), rows, args, options, eps, len(x))
    if tmp is not None:
        tmp.cleanup()


def write_report(out: RunDir, rows: list[dict], args, options: dict, eps: float, n: int) -> None:
    name = "auto (smoke budget)" if args.smoke else f"auto ({args.version})"
    lines = [f"# Accuracy against training time: `{args.classifier}`", "",
             f"{options.get('model')} on {options.get('dataset')}, adversarial training {options.get('adv')} at eps "
             f"{float(options.get('eps') or 0):g}, {options.get('epochs')} epochs; evaluated on {n} test images (seeded draw "
             f"{args.seed}) at L-inf eps {eps:g}, {args.threads} torch thread(s).", "",
             f"| epoch | train wall s | train CPU s | clean (whole test set) | clean ({n} images) | PGD-20 | {name} | "
             "eval CPU s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        full = f"{100 * r['test_accuracy_full']:.1f}%" if r["test_accuracy_full"] is not None else ""
        lines.append(f"| {r['epoch']} | {float(r['train_seconds'] or 0):.0f} | {float(r['train_cpu_seconds'] or 0):.0f} "
                     f"| {full} | {100 * r['clean']:.1f}% | {100 * r['pgd20']:.1f}% | {100 * r['auto']:.1f}% | "
                     f"{r['auto_cpu_seconds'] + r['pgd20_cpu_seconds']:.0f} |")
    for r in rows:
        if r.get("warnings"):
            lines.append(f"\nepoch {r['epoch']}: auto warns: {r['warnings']}")
    lines.append("\nPoints of one run share one one-cycle schedule: only the last has annealed (see the script's "
                 "docstring).")
    report = "\n".join(lines) + "\n"
    columns = ["epoch", "train_seconds", "train_cpu_seconds", "test_accuracy_full", "clean", "pgd20", "auto",
               "auto_seconds", "auto_cpu_seconds", "pgd20_seconds", "pgd20_cpu_seconds", "warnings"]
    write_csv(out.path / "results.csv", rows, columns)
    atomic_write_text(out.path / "report.md", report)
    plot_curve(rows, out.path / "curve.png", f"{options.get('model')} / {options.get('dataset')}, eps {eps:g}")
    last = rows[-1]
    out.write_summary({"classifier": str(args.classifier), "n": n, "eps": eps, "version": args.version,
                       "last_epoch": last["epoch"], "clean": last["clean"], "auto": last["auto"],
                       "pgd20": last["pgd20"]})
    print(report, end="")
    print(out.path)


if __name__ == "__main__":
    main()
