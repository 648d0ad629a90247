"""The course homework's transfer setting: craft on proxies trained here, measure a different victim.

    flock /tmp/rlab-heavy.lock .venv/bin/python bench/transfer.py [--train-size 10000] [--epochs 5]
    .venv/bin/python bench/transfer.py --smoke   # generated images in place of CIFAR-10, 1 epoch, 2 steps

CIFAR-10 (JPEG copy, ../shared/data via rlab.vision.data), the course's attack set of
20 test images per class (200), Linf eps = 8/255, 10 iterations of eps/10.
Proxies: two small airbench-style `fastnet`s (seeds 0 and 1); victim: a plain
VGG-style conv-pool net (`--victim` takes any rlab.vision.models name, e.g.
resnet20_cifar10, when more CPU time is at hand). All are trained here on a
subset of the training split in CPU minutes, so accuracies are far below the
published ones; trained weights are cached in ~/.cache/rlab/bench_transfer/. The table is the victim's accuracy
under each attack (lower = better transfer) and the proxy's own (white-box)
accuracy. The literature (Dong et al. 2018; Xie et al. 2019; Liu et al. 2017)
expects I-FGSM < MI-FGSM < DI-MI-FGSM < ensemble in transfer strength, with
FGSM often transferring better than I-FGSM, which overfits its proxy.

Measured on the 2-core development machine (2026-11-22, defaults): clean accuracy
on the 200 images: proxies 0.600 / 0.595, victim 0.585. Victim accuracy under
FGSM 0.510, I-FGSM 0.500, MI-FGSM 0.485, DI-MI-FGSM 0.465, ensemble I-FGSM 0.470,
ensemble MI-FGSM 0.455, ensemble DI-MI-FGSM 0.435 (proxy's own: 0.000-0.045).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from _smoke import parse_args, synthetic_image_folder
from attacks import BIM, DIMIFGSM, FGSM, MIFGSM, Ensemble, transfer_attack

CACHE = Path(os.environ.get("RLAB_CACHE") or Path.home() / ".cache" / "rlab") / "bench_transfer"


def vgg_small(num_classes: int = 10) -> nn.Module:
    """A plain conv-pool net (no batch norm, no residuals): an architecture unlike the proxies'."""
    layers, c_in = [], 3
    for c_out in (32, 64, 128):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, num_classes))


def build(kind: str) -> nn.Module:
    """'fastnet16' (airbench-style, widths 16/32/64), 'vgg_small', or any rlab.vision.models name."""
    from rlab.vision.models import build_model, fastnet

    model = build_model("fastnet")
    if kind == "fastnet16":
        model.net = fastnet(widths=(16, 32, 64))
    elif kind == "vgg_small":
        model.net = vgg_small()
    else:
        model = build_model(kind)
    return model


def train_model(kind: str, seed: int, x: torch.Tensor, y: torch.Tensor, epochs: int,
                cache: Path | None) -> nn.Module:
    """Adam with a linear decay, random flips; cached in `cache` (None: never) by (kind, seed, data size, epochs)."""
    path = cache / f"{kind}__seed{seed}__n{x.shape[0]}__e{epochs}.pt" if cache is not None else None
    torch.manual_seed(seed)
    model = build(kind)
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=5e-4)
    total = epochs * ((x.shape[0] + 127) // 128)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / total)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0])
        for begin in range(0, x.shape[0], 128):
            idx = order[begin:begin + 128]
            xb = x[idx].float() / 255
            flip = torch.rand(idx.shape[0]) < 0.5
            xb[flip] = xb[flip].flip(-1)
            loss = F.cross_entropy(model(xb), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    print(f"  trained {kind} (seed {seed}) in {time.perf_counter() - start:.0f} s")
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--victim", default="vgg_small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", default="cifar10-jpg",
                        help="cifar10-jpg, cifar10, imagefolder:PATH (weights not cached), or 'synthetic' (a few "
                             "generated 32x32 images, what --smoke uses)")
    parser.add_argument("--per-class", type=int, default=20, help="attacked test images per class (the course: 20)")
    args = parse_args(parser, dict(train_size=48, epochs=1, steps=2, threads=1, dataset="synthetic", per_class=2))
    torch.set_num_threads(args.threads)
    if args.dataset != "synthetic":
        return run(args, args.dataset)
    with tempfile.TemporaryDirectory(prefix="rlab-bench-transfer-") as tmp:
        run(args, f"imagefolder:{synthetic_image_folder(tmp)}")


def run(args: argparse.Namespace, dataset: str) -> None:
    """Train the proxies and the victim on `dataset`, then print the table of transfer attacks."""
    from rlab.vision.data import course_subset, load_dataset

    cache = {"cifar10-jpg": CACHE, "cifar10": CACHE / "cifar10"}.get(dataset)  # image folders: not cached
    train = load_dataset(dataset, "train")
    test = course_subset(load_dataset(dataset, "test"), per_class=args.per_class, seed=0)
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(0))[:args.train_size]
    x_train, y_train = train.images[pick], train.labels[pick]
    x, y = test.float(), test.labels
    label = {"cifar10-jpg": "CIFAR-10 (JPEG)", "cifar10": "CIFAR-10"}.get(args.dataset, args.dataset)
    print(f"{label}: training on {len(y_train)} images x {args.epochs} epochs; attacking "
          f"{len(y)} test images ({args.per_class} per class), eps {args.eps * 255:.0f}/255, {args.steps} steps")
    proxy = train_model("fastnet16", 0, x_train, y_train, args.epochs, cache)
    proxy2 = train_model("fastnet16", 1, x_train, y_train, args.epochs, cache)
    victim = train_model(args.victim, 2, x_train, y_train, args.epochs, cache)
    for name, model in [("proxy fastnet16 seed 0", proxy), ("proxy fastnet16 seed 1", proxy2),
                        (f"victim {args.victim}", victim)]:
        print(f"  clean accuracy on the {len(y)}: {name} {accuracy(model, x, y):.3f}")

    rel = 1 / args.steps
    rows = [
        ("FGSM", FGSM(), proxy),
        ("I-FGSM", BIM(steps=args.steps, rel_stepsize=rel), proxy),
        ("MI-FGSM", MIFGSM(steps=args.steps, rel_stepsize=rel), proxy),
        ("DI-MI-FGSM", DIMIFGSM(steps=args.steps, rel_stepsize=rel, seed=0), proxy),
        ("ensemble I-FGSM", BIM(steps=args.steps, rel_stepsize=rel), Ensemble([proxy, proxy2])),
        ("ensemble MI-FGSM", MIFGSM(steps=args.steps, rel_stepsize=rel), Ensemble([proxy, proxy2])),
        ("ensemble DI-MI-FGSM", DIMIFGSM(steps=args.steps, rel_stepsize=rel, seed=0), Ensemble([proxy, proxy2])),
    ]
    print(f"\n{'attack (crafted on proxy)':26s} {'proxy acc':>9s} {'victim acc':>10s}")
    print(f"{'none (clean)':26s} {accuracy(proxy, x, y):9.3f} {accuracy(victim, x, y):10.3f}")
    for name, attack, surrogate in rows:
        result = transfer_attack(attack, surrogate, victim, x, y, eps=args.eps)
        surrogate_accuracy = accuracy(surrogate, result.x_adv, y)
        print(f"{name:26s} {surrogate_accuracy:9.3f} {result.victim_accuracy.item():10.3f}")


if __name__ == "__main__":
    main()
