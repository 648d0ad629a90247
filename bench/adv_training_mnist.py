"""PGD vs fast vs free adversarial training on MNIST-5k, eps 0.3: cost and robustness in one table.

    flock /tmp/rlab-heavy.lock .venv/bin/python bench/adv_training_mnist.py [--minutes 9.5] [--methods pgd,fast,free]

Each method trains rlab's `mnist_cnn` on the 4,000 training digits of MNIST-5k
for a wall-clock budget (--minutes), with eps ramped linearly (per minibatch) from 0 to 0.3 over
the first `--ramp` of the budget (Madry et al. train at 0.3 from the start with
60k images and hours; Wong et al. 2020 ramp eps for fast training on MNIST).
Evaluation on the 1,000 test digits: clean accuracy and robust accuracy under
PGD-50 (alpha = 2.5 eps / 50) with 5 random restarts (attacks.PGD), at eps 0.3.
Anchor: Madry et al. 2018, 89.6% PGD-robust at 98.5% clean (60k images).
Results: runs/bench/adv_training_mnist__<seed>__<time>/results.csv and report.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from attacks import PGD, robust_accuracy
from defenses import AdversarialTraining, correct
from rlab.data import load_dataset
from rlab.models import build_model
from rlab.runs import RunDir, atomic_write_text
from rlab.runtime import seed_everything, set_threads


def train(method: str, x, y, eps: float, minutes: float, ramp: float, batch_size: int, steps: int, replays: int,
          seed: int, log) -> tuple[torch.nn.Module, float, int]:
    """Adversarially train mnist_cnn for `minutes`; returns (model, seconds, epochs)."""
    seed_everything(seed)
    model = build_model("mnist_cnn", 10, 1, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    budget, start, epoch, trainer = minutes * 60, time.perf_counter(), 0, None
    while time.perf_counter() - start < budget:
        model.train()
        for batch in torch.randperm(len(x)).split(batch_size):
            progress = (time.perf_counter() - start) / budget
            eps_now = eps * min(1.0, max(progress / ramp, 0.05)) if ramp > 0 else eps
            previous = trainer
            trainer = AdversarialTraining(method, eps_now, steps=steps if method == "pgd" else None,
                                          replays=replays if method == "free" else None)
            if previous is not None and previous.delta is not None:
                trainer.delta = previous.delta.clamp(-eps_now, eps_now)
            loss, logits = trainer.step(model, x[batch], y[batch], optimizer)
            if time.perf_counter() - start >= budget:
                break
        epoch += 1
        log(f"{method} epoch {epoch} eps {eps_now:.3f} loss {loss.item():.3f} "
            f"acc {(logits.argmax(1) == y[batch]).float().mean().item():.2f} t {time.perf_counter() - start:.0f}s")
    return model.eval(), time.perf_counter() - start, epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="pgd,fast,free")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--minutes", type=float, default=9.5, help="training budget per method")
    parser.add_argument("--ramp", type=float, default=0.3, help="fraction of the budget over which eps ramps up")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--pgd-steps", type=int, default=10, help="inner steps of PGD training")
    parser.add_argument("--replays", type=int, default=8, help="m of free training")
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--eval-n", type=int, default=1000, help="test digits to evaluate (all 1,000 by default)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_threads(args.threads, "cnn")
    train_data, test_data = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    x, y = train_data.float(), train_data.labels
    x_test, y_test = test_data.float()[:args.eval_n], test_data.labels[:args.eval_n]
    run = RunDir.create("bench", "adv_training_mnist", args.seed, vars(args))
    attack = PGD(steps=args.eval_steps, rel_stepsize=2.5 / args.eval_steps, restarts=args.restarts, seed=args.seed)
    rows = []
    for method in args.methods.split(","):
        model, seconds, epochs = train(method, x, y, args.eps, args.minutes, args.ramp, args.batch_size,
                                       args.pgd_steps, args.replays, args.seed,
                                       lambda line: print(line, flush=True))
        clean = correct(model, x_test, y_test).float().mean().item()
        start = time.perf_counter()
        robust = robust_accuracy(model, attack, x_test, y_test, eps=args.eps)
        rows.append(dict(method=method, epochs=epochs, train_seconds=round(seconds, 1), clean=round(clean, 4),
                         pgd_robust=round(float(robust.accuracy[0]), 4), eval_seconds=round(time.perf_counter() - start, 1)))
        print(rows[-1], flush=True)
    header = ["method", "epochs", "train_seconds", "clean", "pgd_robust", "eval_seconds"]
    csv = "\n".join([",".join(header)] + [",".join(str(r[h]) for h in header) for r in rows]) + "\n"
    atomic_write_text(run.path / "results.csv", csv)
    table = [f"MNIST-5k (4,000 train / {len(x_test)} test), eps {args.eps}, mnist_cnn, {args.minutes} min budget; "
             f"robust = PGD-{args.eval_steps} x {args.restarts} restarts",
             "| method | epochs | train s | clean | PGD robust | eval s |", "|---|---|---|---|---|---|"]
    table += [f"| {r['method']} | {r['epochs']} | {r['train_seconds']} | {r['clean']:.1%} | {r['pgd_robust']:.1%} | "
              f"{r['eval_seconds']} |" for r in rows]
    atomic_write_text(run.path / "report.md", "\n".join(table) + "\n")
    run.write_summary({f"{r['method']}/{k}": r[k] for r in rows for k in ("clean", "pgd_robust", "train_seconds")})
    print("\n".join(table))
    print(run.path)


if __name__ == "__main__":
    main()
