"""Adversarial patch: ours (attacks.patch) against ART's AdversarialPatchPyTorch on the same model, size, steps and images.

    make bench    # ART; its patch attack also imports torchvision: pip install --no-deps torchvision==<your torch's>
    flock /tmp/rlab-heavy.lock .venv/bin/python bench/patch_vs_art.py --classifier runs/classifier/<cifar10-jpg run> \
        --target dog --area 0.1 --steps 512 --n-fit 2048
    .venv/bin/python bench/patch_vs_art.py --smoke          # a tiny random model, seconds (tests/test_bench_patch.py)

Both train one square patch of `--area` of the image towards `--target` for the same
number of Adam steps (ART: max_iter passes over the `--n-fit` training images, each
pass `n_fit / batch_size` steps), with the same batch size, learning rate and
training images, and the same geometric EOT: rotation in ±`--rotation` degrees and
a side scaled by [`--min-scale`, 1]. ART renders by nearest-neighbour sampling and has
no photometric or blur transformation, so ours runs two to four times: with ART's
transformations (nearest-neighbour rendering, no brightness, contrast or blur),
with its own defaults (half the draws bilinear; brightness, contrast, blur), and
(`--canvas P`) with its defaults plus ART's own rendering in a share P of the draws
(the patch upsampled to a canvas of the image's side and resampled, both by nearest
neighbour: attacks.patch.render_through_canvas, pixel-exact to ART's), and, unless
`--no-full-resolution`, kept at the image's resolution as ART keeps its patch, with
ART's transformations (AdversarialPatch(full_resolution=True)). Every patch is then pasted at full size on the
same `--n` held-out test images of the other classes by two rules, each with the
same random draws for every patch: ours (a random location and rotation, bilinear)
and ART's `apply_patch` (the same, nearest neighbour; our patches enter it upsampled by nearest neighbour, and ART renders
its own 32x32 patch at the patch's side by nearest-neighbour sampling). Wall times
(and CPU times, steadier on a shared machine) are the patch training alone, one torch thread. Prints a table and the ratios;
writes results.csv and the patches in a run folder.

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


def import_torchvision():
    """torchvision, importable even where its wheel was built for another torch (its compiled ops then fail to load;
    the two operator schemas its import registers are declared first). SystemExit naming the install when missing."""
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
        import_torchvision.library = library  # keep the declarations alive
        import torchvision  # noqa: F401


def import_art_patch():
    """ART's AdversarialPatchPyTorch and PyTorchClassifier; SystemExit naming what to install when missing."""
    import_torchvision()
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
    parser.add_argument("--no-full-resolution", dest="full_resolution", action="store_false",
                        help="skip our patch kept at the image's resolution (ART's parametrisation, "
                             "AdversarialPatch(full_resolution=True))")
    parser.add_argument("--canvas", type=float, default=0.0,
                        help="a third patch of ours whose EOT renders this share of the draws through ART's canvas "
                             "paste (attacks.patch.render_through_canvas); 0: skip it")
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

    placement = AdversarialPatch(rotation=args.rotation)
    scale = side / min(height, width)
    patches, seconds, cpu_seconds = {}, {}, {}
    matched = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, rotation=args.rotation,
                   min_scale=args.min_scale, seed=args.seed)
    placement.place(x[:2], torch.rand(channels, side, side))  # warm-up: kornia's lazy imports stay out of the timing
    ours_as_art = AdversarialPatch(brightness=0, contrast=0, blur=0, nearest=1.0, **matched)
    variants = [("ours, ART's transformations", ours_as_art),
                ("ours, full EOT (+ bilinear, brightness, contrast, blur)", AdversarialPatch(**matched))]
    if args.canvas:
        variants.append((f"ours, full EOT + ART's canvas paste ({args.canvas:g})",
                         AdversarialPatch(canvas=args.canvas, **matched)))
    if args.full_resolution:
        variants.append(("ours, full resolution, ART's transformations",
                         AdversarialPatch(full_resolution=True, brightness=0, contrast=0, blur=0, **matched)))
    for name, attack in variants:
        start, cpu = time.perf_counter(), time.process_time()
        patches[name], _ = attack.fit(model, x_fit, target, args.area, torch.Generator().manual_seed(args.seed))
        seconds[name], cpu_seconds[name] = time.perf_counter() - start, time.process_time() - cpu
        print(f"{name:55s} fit {seconds[name]:8.2f} s wall, {cpu_seconds[name]:8.2f} s CPU")

    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    estimator = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(channels, height, width),
                                  nb_classes=len(classes), clip_values=(0.0, 1.0), device_type="cpu")
    art_attack = AdversarialPatchPyTorch(estimator, rotation_max=args.rotation, scale_min=args.min_scale * scale,
                                         scale_max=scale, learning_rate=args.lr, max_iter=args.steps // per_pass,
                                         batch_size=args.batch_size, patch_shape=(channels, height, width),
                                         patch_type="square", optimizer="Adam", targeted=True, verbose=False)
    labels = np.eye(len(classes), dtype=np.float32)[np.full(len(x_fit), target)]
    start, cpu = time.perf_counter(), time.process_time()
    art_patch, _ = art_attack.generate(x_fit.numpy(), labels)
    name = "ART AdversarialPatchPyTorch"
    seconds[name], cpu_seconds[name] = time.perf_counter() - start, time.process_time() - cpu
    print(f"{name:55s} fit {seconds[name]:8.2f} s wall, {cpu_seconds[name]:8.2f} s CPU")
    patches[name] = torch.from_numpy(art_patch).float()  # (C, H, W): a full-resolution patch

    def ours_placement(patch: torch.Tensor) -> float:
        # a full-resolution patch (ART's, ours with full_resolution) enters as one nearest-neighbour rendering
        generator = torch.Generator().manual_seed(args.seed + 2)
        x_adv = torch.cat([placement.place(x[b:b + 500], patch, generator, side)[0] for b in range(0, len(x), 500)])
        return success_rate(model, x_adv, target)

    def art_placement(patch: torch.Tensor) -> float:
        np.random.seed(args.seed + 2)
        torch.manual_seed(args.seed + 2)
        full = F.interpolate(patch[None], size=(height, width), mode="nearest")[0].numpy()  # the identity at full size
        return success_rate(model, torch.from_numpy(art_attack.apply_patch(x.numpy(), scale=scale, patch_external=full))
                            .float(), target)

    print(f"\ntargeted success on {len(x)} held-out images, random location and rotation ±{args.rotation:g}°, full size:")
    print(f"{'patch':55s} {'wall (s)':>8s} {'CPU (s)':>8s} {'our paste (bilinear)':>21s} "
          f"{'ART apply_patch (nearest)':>26s}")
    rows = []
    for label, patch in patches.items():
        rows.append({"attack": label, "area": round(side * side / (height * width), 5), "steps": args.steps,
                     "fit_seconds": round(seconds[label], 2), "fit_cpu_seconds": round(cpu_seconds[label], 2),
                     "success_our_paste": round(ours_placement(patch), 4),
                     "success_art_apply_patch": round(art_placement(patch), 4)})
        print(f"{label:55s} {seconds[label]:8.2f} {cpu_seconds[label]:8.2f} {rows[-1]['success_our_paste']:21.3f} "
              f"{rows[-1]['success_art_apply_patch']:26.3f}")
    art_row = rows[-1]
    for row in rows[:-1]:
        print(f"{row['attack']} / ART: wall time {row['fit_seconds'] / max(art_row['fit_seconds'], 1e-9):.2f}x, "
              f"CPU time {row['fit_cpu_seconds'] / max(art_row['fit_cpu_seconds'], 1e-9):.2f}x, success "
              f"{row['success_our_paste'] - art_row['success_our_paste']:+.3f} (our paste), "
              f"{row['success_art_apply_patch'] - art_row['success_art_apply_patch']:+.3f} (ART's paste)")
    if not args.smoke:
        from rlab.runs import RunDir, save_checkpoint, write_csv

        run = RunDir.create("bench", "patch_vs_art", args.seed, vars(args))
        write_csv(run.path / "results.csv", rows)
        keys = (("ours", "ours_full_eot") + (("ours_canvas",) if args.canvas else ())
                + (("ours_full_resolution",) if args.full_resolution else ()) + ("art",))
        save_checkpoint(run.path / "checkpoints" / "patches.pt", dict(zip(keys, patches.values())))
        print(run.path)

if __name__ == "__main__":
    main()
