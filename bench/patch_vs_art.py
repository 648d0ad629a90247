"""Adversarial patch: ours (attacks.patch) against ART's AdversarialPatchPyTorch on the same model, size, steps and images.

    make bench    # ART; its patch attack also imports torchvision: pip install --no-deps torchvision==<your torch's>
    flock /tmp/rlab-heavy.lock .venv/bin/python bench/patch_vs_art.py --classifier runs/classifier/<cifar10-jpg run> \
        --target 0 --area 0.1 --steps 500
    .venv/bin/python bench/patch_vs_art.py --smoke          # a tiny random model, seconds (tests/test_bench_patch.py)

Both train one square patch of `--area` of the image towards `--target` for the same
number of Adam steps (ART: max_iter passes over the `--n-fit` training images, each
pass `n_fit / batch_size` steps), with the same batch size, learning rate and
training images, and the same geometric EOT: rotation in ±`--rotation` degrees and
a side scaled by [`--min-scale`, 1]. ART has no photometric or blur transformation,
so ours runs twice: with ART's transformations only, and with its own defaults
(brightness, contrast, blur added). Every patch is then pasted by one placement
(a random location and rotation at full size, the same draws for each) on the same
`--n` held-out test images of the other classes; ART's 32x32 patch is rendered at
the patch's side by nearest-neighbour sampling, as its own affine warp does. ART's
own `apply_patch` is reported beside it. Wall times are the patch training alone,
one torch thread. Prints a table and the ratios; writes results.csv in a run folder.

ART's patch needs torchvision's Python transforms only; where the installed
torchvision wheel was built for a different torch (its compiled operators fail to
load, e.g. a CUDA torchvision next to a CPU torch), the two operator schemas its
import registers are declared first so that the import succeeds.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks.patch import AdversarialPatch, patch_side  # noqa: E402


def import_art_patch():
    """ART's AdversarialPatchPyTorch and PyTorchClassifier; SystemExit(2) naming what to install when missing."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise SystemExit("patch_vs_art: ART's AdversarialPatchPyTorch needs torchvision; install the wheel that "
                         f"matches torch {torch.__version__} with `pip install --no-deps torchvision==...`") from None
    except RuntimeError as e:  # a torchvision built for another torch: declare the ops its import registers
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in list(sys.modules) if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_art_patch.library = library  # keep the declarations alive
        import torchvision  # noqa: F401
    try:
        from art.attacks.evasion import AdversarialPatchPyTorch
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        raise SystemExit("patch_vs_art: ART is missing; `make bench` installs it") from None
    return AdversarialPatchPyTorch, PyTorchClassifier


def tiny_setting(seed: int = 0):
    """--smoke: a random conv filter bank with a global max-pool on 16x16 low-contrast noise images."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten()).eval()
    g = torch.Generator().manual_seed(seed)
    x = 0.25 + 0.5 * torch.rand(96, 3, 16, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, [str(k) for k in range(10)], x[:32], x[32:], y[32:]


def classifier_setting(args):
    from rlab.vision.classifier import load_classifier
    from rlab.vision.data import load_dataset
    from rlab.vision.patch_bench import draw, resolve_class

    model, options = load_classifier(args.classifier, "cpu")
    classes = list(options["classes"])
    target = resolve_class(args.target, classes)
    x_fit, _ = draw(load_dataset(options["dataset"], "train", options.get("data_dir")), args.n_fit, args.seed)
    x, y = draw(load_dataset(options["dataset"], "test", options.get("data_dir")), args.n, args.seed + 1, exclude=target)
    return model, classes, x_fit, x, y, target


def success_rate(model, x_adv: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return float((torch.cat([model(x_adv[b:b + 500]).argmax(1) for b in range(0, len(x_adv), 500)]) == target)
                     .float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", help="run folder of `rlab classifier train` (not with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model and a few steps")
    parser.add_argument("--target", default="0", help="class index or name")
    parser.add_argument("--area", type=float, default=0.1, help="patch area, share of the image")
    parser.add_argument("--steps", type=int, default=500, help="Adam steps, both attacks")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rotation", type=float, default=22.5)
    parser.add_argument("--min-scale", type=float, default=0.8)
    parser.add_argument("--n-fit", type=int, default=2048, help="training images (a multiple of --batch-size)")
    parser.add_argument("--n", type=int, default=1000, help="held-out test images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.smoke == bool(args.classifier):
        parser.error("give exactly one of --classifier RUN_DIR and --smoke")
    torch.set_num_threads(1)
    AdversarialPatchPyTorch, PyTorchClassifier = import_art_patch()
    if args.smoke:
        args.steps, args.batch_size, args.area, args.n_fit = 4, 16, 0.07, 32
        model, classes, x_fit, x, y = tiny_setting(args.seed)
        target = 7
        keep = y != target
        x, y = x[keep], y[keep]
    else:
        model, classes, x_fit, x, y, target = classifier_setting(args)
    for p in model.parameters():
        p.requires_grad_(False)
    per_pass = math.ceil(len(x_fit) / args.batch_size)
    if args.steps % per_pass:
        parser.error(f"--steps {args.steps} must be a multiple of the {per_pass} steps of one pass over --n-fit images "
                     f"(ART counts passes)")
    channels, height, width = x.shape[1:]
    side = patch_side(args.area, height, width)
    print(f"{len(x_fit)} training / {len(x)} held-out images {channels}x{height}x{width}, target {classes[target]}, "
          f"patch {side}x{side} ({100 * side * side / (height * width):.2f}% of the image, budget {100 * args.area:g}%), "
          f"{args.steps} Adam steps of {args.batch_size} (lr {args.lr:g}), rotation ±{args.rotation:g}°, "
          f"scale [{args.min_scale:g}, 1], 1 thread")

    rows = []
    placement = AdversarialPatch(rotation=args.rotation, seed=args.seed + 2)

    def evaluate(name: str, patch: torch.Tensor, seconds: float) -> None:
        generator = torch.Generator().manual_seed(args.seed + 2)
        x_adv = torch.cat([placement.place(x[b:b + 500], patch, generator)[0] for b in range(0, len(x), 500)])
        rows.append({"attack": name, "area": round(side * side / (height * width), 5), "steps": args.steps,
                     "fit_seconds": round(seconds, 2), "targeted_success": round(success_rate(model, x_adv, target), 4)})
        print(f"{name:44s} fit {seconds:8.2f} s   targeted success {rows[-1]['targeted_success']:.3f}")

    matched = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, rotation=args.rotation,
                   min_scale=args.min_scale, seed=args.seed)
    for name, attack in [("ours, ART's transformations", AdversarialPatch(brightness=0, contrast=0, blur=0, **matched)),
                         ("ours, full EOT (+ brightness, contrast, blur)", AdversarialPatch(**matched))]:
        start = time.perf_counter()
        patch, _ = attack.fit(model, x_fit, target, args.area, torch.Generator().manual_seed(args.seed))
        evaluate(name, patch, time.perf_counter() - start)

    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    estimator = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(channels, height, width),
                                  nb_classes=len(classes), clip_values=(0.0, 1.0), device_type="cpu")
    scale = side / min(height, width)
    art_attack = AdversarialPatchPyTorch(estimator, rotation_max=args.rotation, scale_min=args.min_scale * scale,
                                         scale_max=scale, learning_rate=args.lr, max_iter=args.steps // per_pass,
                                         batch_size=args.batch_size, patch_shape=(channels, height, width),
                                         patch_type="square", optimizer="Adam", targeted=True, verbose=False)
    labels = np.eye(len(classes), dtype=np.float32)[np.full(len(x_fit), target)]
    start = time.perf_counter()
    art_patch, _ = art_attack.generate(x_fit.numpy(), labels)
    art_seconds = time.perf_counter() - start
    rendered = F.interpolate(torch.from_numpy(art_patch).float()[None], size=(side, side), mode="nearest")[0]
    evaluate("ART AdversarialPatchPyTorch", rendered, art_seconds)
    own = torch.from_numpy(art_attack.apply_patch(x.numpy(), scale=scale)).float()
    own_success = success_rate(model, own, target)
    print(f"{'  (ART patch, pasted by ART apply_patch)':44s} {'':15s}   targeted success {own_success:.3f}")

    ours, art_row = rows[0], rows[-1]
    print(f"\nours / ART (same transformations): wall time {ours['fit_seconds'] / max(art_row['fit_seconds'], 1e-9):.2f}x, "
          f"success {ours['targeted_success']:.3f} vs {art_row['targeted_success']:.3f} "
          f"({ours['targeted_success'] - art_row['targeted_success']:+.3f}); full EOT: "
          f"{rows[1]['fit_seconds'] / max(art_row['fit_seconds'], 1e-9):.2f}x the time, success {rows[1]['targeted_success']:.3f}")
    if not args.smoke:
        from rlab.runs import RunDir, write_csv

        run = RunDir.create("bench", "patch_vs_art", args.seed, vars(args))
        write_csv(run.path / "results.csv", rows + [{"attack": "ART (its own apply_patch)", "area": art_row["area"],
                                                     "steps": args.steps, "fit_seconds": art_row["fit_seconds"],
                                                     "targeted_success": round(own_success, 4)}])
        print(run.path)


if __name__ == "__main__":
    main()
