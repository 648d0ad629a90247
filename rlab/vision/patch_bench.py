"""`rlab bench patch`: targeted success of a universal adversarial patch against its size.

Brown et al. 2017, "Adversarial Patch" (attacks.patch): for each patch area (the
threat model's budget, a share of the image) one patch is trained with
expectation over transformations on `--n-fit` training images, then pasted at a
random location and rotation on `--n` held-out test images of the other classes.
Two controls at the same size and placement: no patch (the share of images the
model already calls the target) and a patch of uniform noise. Writes into one
run folder:

    results.csv    area, patch_side, area_share, target, targeted_success, random_patch_success,
                   no_patch_target_rate, n_fit, n_images, steps, grad_steps, queries, fit_seconds
    success.png    targeted success (%) against patch area (% of the image)
    gallery.png    each patch and held-out images wearing it, with the model's predictions
    report.md      the table and both figures
    checkpoints/patches.pt   the patches, {"area=0.1": (C, s, s) tensor, ...}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from attacks.patch import AdversarialPatch, patch_side
from rlab.config import check, opt
from rlab.errors import UserError
from rlab.runs import RunDir, atomic_write_text, save_checkpoint, write_csv
from rlab.runtime import DEVICES, resolve_device, seed_everything, set_threads

RESULT_COLUMNS = ["area", "patch_side", "area_share", "target", "targeted_success", "random_patch_success",
                  "no_patch_target_rate", "n_fit", "n_images", "steps", "grad_steps", "queries", "fit_seconds"]


@dataclass
class PatchBenchConfig:
    classifier: str = opt(None, "run folder of the victim classifier (rlab classifier train)")
    target: str = opt("0", "the class the patch pushes every image to: an index or a class name (e.g. 0 or airplane)")
    sizes: list[float] = opt([0.02, 0.05, 0.1], "patch areas as shares of the image (the budget), e.g. 0.02,0.05,0.1")
    steps: int = opt(AdversarialPatch.steps, "Adam steps of patch training (one minibatch of --batch-size images each)")
    batch_size: int = opt(AdversarialPatch.batch_size, "images per patch-training step")
    lr: float = opt(AdversarialPatch.lr, "Adam learning rate on the patch (pixels in [0, 1])")
    rotation: float = opt(AdversarialPatch.rotation, "EOT and test-time rotation: uniform in ± this many degrees")
    min_scale: float = opt(AdversarialPatch.min_scale, "EOT scale of the side: uniform in [min-scale, 1] (never above the budget)")
    brightness: float = opt(AdversarialPatch.brightness, "EOT brightness shift of the patch: uniform in ± this")
    contrast: float = opt(AdversarialPatch.contrast, "EOT contrast factor of the patch: uniform in 1 ± this")
    blur: float = opt(AdversarialPatch.blur, "EOT Gaussian blur: sigma uniform in [0, this] pixels")
    nearest: float = opt(AdversarialPatch.nearest, "EOT share of nearest-neighbour (crisp) renderings; else bilinear")
    full_resolution: bool = opt(AdversarialPatch.full_resolution, "keep the patch at the image's resolution, as ART "
                                "does, every paste a nearest-neighbour subsample at its pasted side (--nearest unused)")
    n_fit: int = opt(2000, "training-split images the patch is trained on (a fixed random draw)")
    n: int = opt(1000, "held-out test images, none of the target class (a fixed random draw)")
    gallery: int = opt(6, "patched images per size in the gallery (0: none)")
    data_dir: str | None = opt(None, "folder holding the dataset files")
    seed: int = opt(0, "seed of the image draws, patch initialisation, transformations and placements")
    device: str = opt("auto", "device", choices=list(DEVICES))
    threads: int = opt(0, "torch threads (0: every core up to 8)")

    def __post_init__(self) -> None:
        check(self.classifier is not None, "--classifier RUN_DIR is required (a run folder of `rlab classifier train`)")
        for a in self.sizes:
            check(0 < a <= 0.5, f"--sizes values must be patch areas in (0, 0.5] (shares of the image), got {a:g}")
        check(self.n >= 1, f"--n must be >= 1, got {self.n}")
        check(self.n_fit >= 1, f"--n-fit must be >= 1, got {self.n_fit}")
        check(self.gallery >= 0, f"--gallery must be >= 0, got {self.gallery}")
        self.attack()

    def attack(self) -> AdversarialPatch:
        """The AdversarialPatch these options describe (a bad value is a UserError naming the option)."""
        try:
            return AdversarialPatch(steps=self.steps, batch_size=self.batch_size, lr=self.lr, rotation=self.rotation,
                                    min_scale=self.min_scale, brightness=self.brightness, contrast=self.contrast,
                                    blur=self.blur, nearest=self.nearest, full_resolution=self.full_resolution,
                                    seed=self.seed)
        except ValueError as e:
            raise UserError(f"--{str(e).replace('_', '-')}") from None


def resolve_class(target: str, classes: list[str]) -> int:
    """A class given by index ('3') or name ('cat') -> its index; UserError naming the choices otherwise."""
    if target.strip().isdigit() and int(target) < len(classes):
        return int(target)
    if target in classes:
        return classes.index(target)
    raise UserError(f"--target {target!r} is not a class of this model; give an index in [0, {len(classes) - 1}] "
                    f"or a name: {', '.join(classes)}")


def draw(data, n: int, seed: int, exclude: int | None = None):
    """A fixed random draw of n images (optionally none of class `exclude`): (x float in [0, 1], y)."""
    keep = torch.arange(len(data)) if exclude is None else torch.nonzero(data.labels != exclude).flatten()
    g = torch.Generator().manual_seed(seed)
    picks = keep[torch.randperm(len(keep), generator=g)[:n]].sort().values
    return data.float(picks), data.labels[picks]


def load_patch_data(cfg, options: dict, target: int, device: torch.device):
    """Training images to fit on, held-out test images (not of the target class) to evaluate on."""
    from rlab.vision.data import load_dataset

    data_dir = cfg.data_dir or options.get("data_dir")
    x_fit, _ = draw(load_dataset(options["dataset"], "train", data_dir), cfg.n_fit, cfg.seed)
    x, y = draw(load_dataset(options["dataset"], "test", data_dir), cfg.n, cfg.seed + 1, exclude=target)
    return x_fit.to(device), x.to(device), y.to(device)


@torch.no_grad()
def target_rate(model, x: torch.Tensor, target: int, batch_size: int = 500) -> float:
    """Share of images x the model classifies as `target`."""
    hits = sum(int((model(x[b:b + batch_size]).argmax(1) == target).sum()) for b in range(0, len(x), batch_size))
    return hits / max(1, len(x))


def evaluate_patch(model, attack, x: torch.Tensor, patch: torch.Tensor, target: int, seed: int,
                   batch_size: int = 500, side: int | None = None) -> tuple[float, float]:
    """(targeted success, mean area share) of `patch` pasted by the test-time placement on x (seeded) at `side`
    (a full-resolution patch is sampled down to it)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    hits, share = 0, 0.0
    with torch.no_grad():
        for b in range(0, len(x), batch_size):
            x_adv, mask = attack.place(x[b:b + batch_size], patch, generator, side)
            hits += int((model(x_adv).argmax(1) == target).sum())
            share += float(mask.sum()) / mask[0].numel()
    return hits / len(x), share / len(x)


def plot_success(rows: list[dict[str, Any]], title: str, out) -> Any:
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    areas = [100 * r["area"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    ax.plot(areas, [100 * r["targeted_success"] for r in rows], "-o", lw=1.8, label="adversarial patch (EOT)")
    ax.plot(areas, [100 * r["random_patch_success"] for r in rows], "--s", lw=1.2, ms=4, color="grey",
            label="uniform-noise patch (control)")
    ax.axhline(100 * rows[0]["no_patch_target_rate"], color="k", lw=0.8, ls=":", label="no patch")
    ax.set_xlabel("patch area (% of the image)")
    ax.set_ylabel("targeted success (% of held-out images)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(0, max(areas) * 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out)


def plot_gallery(model, attack, x: torch.Tensor, patches: dict[float, torch.Tensor], classes: list[str], target: int,
                 k: int, seed: int, out) -> Any:
    """One row per size: the patch, then k held-out images wearing it, titled with the model's prediction."""
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    k = min(k, len(x))
    picks = torch.linspace(0, len(x) - 1, k).long()
    fig, axes = plt.subplots(len(patches), k + 1, figsize=(1.45 * (k + 1) + 0.4, 1.7 * len(patches) + 0.6), dpi=120,
                             squeeze=False)

    def show(ax, img):
        img = img.permute(1, 2, 0).cpu().numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                  vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    for row, (area, patch) in enumerate(patches.items()):
        generator = torch.Generator(device=x.device).manual_seed(seed)
        x_adv, _ = attack.place(x[picks], patch, generator, patch_side(area, x.shape[2], x.shape[3]))
        with torch.no_grad():
            predictions = model(x_adv).argmax(1)
        show(axes[row, 0], patch)
        axes[row, 0].set_ylabel(f"area {100 * area:g}%", fontsize=8)
        axes[row, 0].set_title("patch", fontsize=8)
        for i in range(k):
            show(axes[row, i + 1], x_adv[i])
            p = int(predictions[i])
            axes[row, i + 1].set_title(classes[p], fontsize=8, color="r" if p == target else "k")
    fig.suptitle(f"Held-out images with the patch; title: the model's prediction (red: the target, {classes[target]})",
                 fontsize=9)
    return save_figure(fig, out)


def run(cfg: PatchBenchConfig) -> Any:
    from rlab.vision.classifier import load_classifier

    set_threads(cfg.threads, "cnn")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model, options = load_classifier(cfg.classifier, device)
    classes = list(options["classes"])
    target = resolve_class(cfg.target, classes)
    for a in cfg.sizes:
        check(a * options["image_size"] ** 2 >= 1, f"--sizes {a:g}: the patch would be smaller than one pixel of a "
                                                   f"{options['image_size']}x{options['image_size']} image")
    x_fit, x, y = load_patch_data(cfg, options, target, device)
    attack = cfg.attack()
    run_dir = RunDir.create("bench", f"patch__{options['dataset'].replace(':', '-')}__{options['model']}", cfg.seed, cfg,
                            device)
    start = time.perf_counter()
    no_patch = target_rate(model, x, target)
    rows, patches = [], {}
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    for area in tqdm(sorted(set(cfg.sizes)), desc="patch sizes", unit="size"):
        t0 = time.perf_counter()
        patch, grad_steps = attack.fit(model, x_fit, target, area, generator)
        fit_seconds = time.perf_counter() - t0
        side = patch_side(area, x.shape[2], x.shape[3])
        success, share = evaluate_patch(model, attack, x, patch, target, cfg.seed + 2, side=side)
        noise = torch.rand(patch.shape, generator=generator, device=device)
        random_success, _ = evaluate_patch(model, attack, x, noise, target, cfg.seed + 2, side=side)
        patches[area] = patch.cpu()
        rows.append({"area": area, "patch_side": side, "area_share": round(share, 5), "target": classes[target],
                     "targeted_success": round(success, 4), "random_patch_success": round(random_success, 4),
                     "no_patch_target_rate": round(no_patch, 4), "n_fit": len(x_fit), "n_images": len(x),
                     "steps": cfg.steps, "grad_steps": grad_steps, "queries": 2 * len(x), "fit_seconds": round(fit_seconds, 2)})
    write_csv(run_dir.path / "results.csv", rows, RESULT_COLUMNS)
    save_checkpoint(run_dir.path / "checkpoints" / "patches.pt", {f"area={a:g}": p for a, p in patches.items()})
    what = f"{options['model']} on {options['dataset']}"
    plot_success(rows, f"{what}: universal patch towards '{classes[target]}'\n"
                       f"({len(x)} held-out images, random location and rotation ±{cfg.rotation:g}°)",
                 run_dir.path / "success.png")
    report = [f"# Adversarial patch: {what}", "",
              f"Victim: `{cfg.classifier}`. One universal patch per area (Brown et al. 2017), target "
              f"**{classes[target]}**, trained for {cfg.steps} Adam steps of {cfg.batch_size} images (lr {cfg.lr:g}) "
              f"on {len(x_fit)} training images with EOT: rotation ±{cfg.rotation:g}°, scale [{cfg.min_scale:g}, 1], "
              f"sub-pixel shift ±0.5 px, nearest-neighbour rendering in {100 * cfg.nearest:g}% of draws (else bilinear), "
              f"brightness ±{cfg.brightness:g}, contrast 1±{cfg.contrast:g}, blur σ ≤ {cfg.blur:g} px. "
              f"Evaluated on {len(x)} held-out test images of the other classes, pasted at a random location "
              f"and rotation at full size (bilinear). Budget: the patch area (share of the image).", "",
              "| patch area (budget) | side (px) | measured share | targeted success | noise patch | no patch | "
              "grad steps | fit (s) |", "|---|---|---|---|---|---|---|---|"]
    report += [f"| {100 * r['area']:g}% | {r['patch_side']} | {100 * r['area_share']:.1f}% | "
               f"{100 * r['targeted_success']:.1f}% | {100 * r['random_patch_success']:.1f}% | "
               f"{100 * r['no_patch_target_rate']:.1f}% | {r['grad_steps']} | {r['fit_seconds']:.1f} |" for r in rows]
    report += ["", "![targeted success against patch area](success.png)", ""]
    if cfg.gallery:
        plot_gallery(model, attack, x, patches, classes, target, cfg.gallery, cfg.seed + 3, run_dir.path / "gallery.png")
        report += ["## Gallery", "", "![gallery](gallery.png)", ""]
    atomic_write_text(run_dir.path / "report.md", "\n".join(report))
    summary: dict[str, Any] = {"target": classes[target], "n_images": len(x), "n_fit": len(x_fit),
                               "no_patch_target_rate": no_patch, "wall_seconds": time.perf_counter() - start}
    for r in rows:
        summary[f"targeted_success/area={r['area']:g}"] = r["targeted_success"]
        summary[f"random_patch_success/area={r['area']:g}"] = r["random_patch_success"]
    run_dir.write_summary(summary)
    return run_dir.path
