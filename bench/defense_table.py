"""Clean / non-adaptive / adaptive robust accuracy of every preprocessing defense on MNIST-5k.

    flock /tmp/rlab-heavy.lock .venv/bin/python bench/defense_table.py [--eps 0.1,0.2,0.3] [--n 500]
    .venv/bin/python bench/defense_table.py --smoke   # every defense, 1 epoch on 200 digits, PGD-2 on 20

Trains rlab's `mnist_cnn` normally (no adversarial training) on the 4,000
MNIST-5k training digits, then for each defense runs `defenses.evaluate_defense`
with attacks.PGD (Linf, 20 steps, alpha = 2.5 eps / 20, from x, early stop):

    non_adaptive  PGD on the bare model, defense applied at test time
    adaptive      PGD through defense.adaptive(): exact gradient (blur, median),
                  Shin & Song surrogate (JPEG), BPDA identity (bit depth),
                  EOT over 8 draws (random resize-pad)

Athalye, Carlini & Wagner 2018 took JPEG-style and randomization defenses to
~0% this way; the table shows whether that holds here.
Results: runs/bench/defense_table__<seed>__<time>/results.csv and report.md.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from attacks import PGD
from defenses import JPEG, BitDepth, GaussianBlur, Identity, MedianSmoothing, RandomResizePad, evaluate_defense
from _smoke import parse_args
from rlab.runs import RunDir, atomic_write_text
from rlab.runtime import seed_everything, set_threads
from rlab.vision.data import load_dataset
from rlab.vision.models import build_model

DEFENSE_ROWS = {
    "none": lambda: Identity(),
    "blur sigma=1": lambda: GaussianBlur(1.0),
    "median 3x3": lambda: MedianSmoothing(3),
    "jpeg q=50 (cubic surrogate)": lambda: JPEG(50),
    "jpeg q=50 (straight-through)": lambda: JPEG(50, rounding="straight-through"),
    "bitdepth 1 bit": lambda: BitDepth(1),
    "bitdepth 2 bits": lambda: BitDepth(2),
    "resize-pad 0.9": lambda: RandomResizePad(0.9, seed=0),
}


def train_standard(x, y, epochs: int, seed: int) -> torch.nn.Module:
    seed_everything(seed)
    model = build_model("mnist_cnn", 10, 1, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(100):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", default="0.1,0.2,0.3")
    parser.add_argument("--n", type=int, default=500, help="test digits to attack")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eot-samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--train-subset", type=int, default=0, help="train on N digits, a seeded draw (0: all 4,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser, dict(eps="0.3", n=20, epochs=1, steps=2, eot_samples=2, threads=1, train_subset=200))
    eps = [float(e) for e in args.eps.split(",")]
    set_threads(args.threads, "cnn")
    train_data, test_data = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    # the splits are sorted by class: take seeded draws, never the first N (digits 0-4 for N = 500)
    draw = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(test_data), generator=draw)[:args.n]
    x_test, y_test = test_data.float()[pick], test_data.labels[pick]
    if args.train_subset:
        train_data = train_data.subset(torch.randperm(len(train_data), generator=draw)[:args.train_subset])
    run = RunDir.create("bench", "defense_table", args.seed, vars(args))
    start = time.perf_counter()
    model = train_standard(train_data.float(), train_data.labels, args.epochs, args.seed)
    print(f"trained mnist_cnn in {time.perf_counter() - start:.0f}s", flush=True)
    attack = PGD(steps=args.steps, rel_stepsize=2.5 / args.steps, random_start=False, seed=args.seed)
    rows = []
    for label, factory in DEFENSE_ROWS.items():
        start = time.perf_counter()
        result = evaluate_defense(model, factory(), attack, x_test, y_test, eps, eot_samples=args.eot_samples)
        for i, e in enumerate(eps):
            rows.append(dict(defense=label, gradient_rule=result["gradient_rule"], eps=e, clean=result["clean"],
                             undefended=result["undefended"][i], non_adaptive=result["non_adaptive"][i],
                             adaptive=result["adaptive"][i], robust=result["robust"][i]))
        print(label, {k: v for k, v in result.items() if k != "defense"}, f"{time.perf_counter() - start:.0f}s",
              flush=True)
    header = ["defense", "gradient_rule", "eps", "clean", "undefended", "non_adaptive", "adaptive", "robust"]
    csv = "\n".join([",".join(header)] + [",".join(str(r[h]) for h in header) for r in rows]) + "\n"
    atomic_write_text(run.path / "results.csv", csv)
    table = [f"MNIST-5k, standard mnist_cnn, {len(x_test)} test digits, PGD-{args.steps} (Linf); "
             f"adaptive = exact / surrogate / BPDA / EOT-{args.eot_samples}",
             "| defense | gradient rule | eps | clean | non-adaptive | adaptive | robust (both) |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['defense']} | {r['gradient_rule']} | {r['eps']:g} | {r['clean']:.1%} | {r['non_adaptive']:.1%} | "
              f"{r['adaptive']:.1%} | {r['robust']:.1%} |" for r in rows]
    atomic_write_text(run.path / "report.md", "\n".join(table) + "\n")
    print("\n".join(table))
    print(run.path)


if __name__ == "__main__":
    main()
