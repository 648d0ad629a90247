"""`rlab bench reprogram`: make a trained classifier solve another task through a learned program.

Elsayed et al. 2018, "Adversarial Reprogramming of Neural Networks"
(attacks.reprogramming): the source task's images (MNIST-5k digits by default)
are embedded in the victim's input, a learned program is added (on the frame
around a small digit, Elsayed et al.'s form, or over the whole image around a
digit resized to the host), and victim class label_map[k] stands for source
class k. The program is trained on the source's training split and scored on
its test split, or, with --validate N, on N training digits held out from it
(to choose options without looking at the test digits); by default each held-out
digit is scored by the victim's log-probabilities averaged over the digit and its
four one-pixel moves (--no-test-moves: the digit alone); the same program is
trained, with the same budget, against an untrained network of the victim's
shape (the control: how much of the result is the trained network's features,
not the program's capacity). Writes into one run folder:

    results.csv      victim, source, form, source_size, source_crop, shift, scale, test_moves, program_pixels,
                     program_share, epochs, scored_on, heldout_accuracy, train_accuracy, initial_program_accuracy,
                     grad_steps, seconds, cpu_seconds
    accuracy.png     training accuracy per epoch, held-out accuracy at the end, both victims
    gallery.png      reprogrammed inputs of held-out digits with the victim's (mapped) answers
    report.md        the table and both figures
    checkpoints/programs.pt   the programs' parameters, {"trained": {"weight": (C, H, W), ...}, "untrained": ...}
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from attacks.reprogramming import (PROGRAM_FORMS, AdversarialProgram, AdversarialReprogramming, reprogrammed_accuracy,
                                   reprogrammed_log_probs)
from rlab.config import check, opt
from rlab.errors import UserError
from rlab.runs import RunDir, atomic_write_text, save_checkpoint, write_csv
from rlab.runtime import DEVICES, resolve_device, seed_everything, set_threads

RESULT_COLUMNS = ["victim", "source", "form", "source_size", "source_crop", "shift", "scale", "test_moves",
                  "program_pixels", "program_share", "epochs", "scored_on",
                  "heldout_accuracy", "train_accuracy", "initial_program_accuracy", "grad_steps", "seconds", "cpu_seconds"]


@dataclass
class ReprogramConfig:
    classifier: str = opt(None, "run folder of the victim classifier (rlab classifier train)")
    source: str = opt("mnist5k", "the source task's dataset (its train split trains the program, its test split scores it)")
    form: str = opt(AdversarialReprogramming.form, "the program: frame (Elsayed et al.: added around the embedded "
                                                   "input), full (added over the whole image), affine (full, plus "
                                                   "a learned gain on the input)", choices=list(PROGRAM_FORMS))
    source_size: int = opt(0, "side in pixels of the embedded source image (0: the host's side for the full and "
                              "affine forms, the source's own side for frame, 28 for MNIST: a 2-pixel frame)")
    source_crop: int = opt(AdversarialReprogramming.crop, "source pixels cut off each border before the resize "
                                                          "(MNIST digits sit in a 20x20 box inside 28x28; 0: none)")
    label_map: list[int] | None = opt(None, "victim class for each source class, e.g. 3,1,0,... (default: class k -> k)")
    n_train: int = opt(0, "train the program on N source training images only, a fixed random draw (0: all)")
    validate: int = opt(0, "hold out N of the source's training images, train on the rest and score on those, never "
                           "on the test split (for choosing options; 0: score on the test split)")
    epochs: int = opt(AdversarialReprogramming.epochs, "passes over the source's training split")
    batch_size: int = opt(AdversarialReprogramming.batch_size, "source images per Adam step")
    lr: float = opt(AdversarialReprogramming.lr, "Adam learning rate on the program W")
    weight_decay: float = opt(AdversarialReprogramming.weight_decay, "L2 penalty lambda on W (Elsayed et al.'s regulariser)")
    shift: float = opt(AdversarialReprogramming.shift, "training-time jitter: move each training digit by up to this "
                                                       "many source pixels per axis (0: none; never at scoring)")
    scale: float = opt(AdversarialReprogramming.scale, "training-time jitter: zoom each training digit by a factor in "
                                                       "[1 - scale, 1 + scale] (0: none; never at scoring)")
    test_moves: bool = opt(True, "score each held-out digit by the victim's log-probabilities averaged over the digit "
                                  "and its four one-pixel moves (a test-time ensemble of the same program; --no-test-moves: "
                                  "the digit alone)")
    control: bool = opt(True, "also train the program against an untrained network of the victim's shape")
    gallery: int = opt(8, "reprogrammed digits in the gallery (0: none)")
    data_dir: str | None = opt(None, "folder holding the dataset files")
    seed: int = opt(0, "seed of the minibatch order and of the untrained control's weights")
    device: str = opt("auto", "device", choices=list(DEVICES))
    threads: int = opt(0, "torch threads (0: every core up to 8)")

    def __post_init__(self) -> None:
        check(self.classifier is not None, "--classifier RUN_DIR is required (a run folder of `rlab classifier train`)")
        check(self.source_size >= 0, f"--source-size must be >= 0 (0: the source's own size), got {self.source_size}")
        check(self.source_crop >= 0, f"--source-crop must be >= 0 (source pixels off each border), got {self.source_crop}")
        check(self.gallery >= 0, f"--gallery must be >= 0, got {self.gallery}")
        check(self.n_train >= 0, f"--n-train must be >= 0 (0: all), got {self.n_train}")
        check(self.validate >= 0, f"--validate must be >= 0 (0: score on the test split), got {self.validate}")
        if self.label_map is not None:
            check(len(set(self.label_map)) == len(self.label_map) and min(self.label_map) >= 0,
                  f"--label-map must list distinct victim classes >= 0, got {','.join(map(str, self.label_map))}")
        self.attack()

    def attack(self) -> AdversarialReprogramming:
        """The AdversarialReprogramming these options describe (a bad value is a UserError naming the option)."""
        try:
            return AdversarialReprogramming(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                            weight_decay=self.weight_decay, source_size=self.source_size or None,
                                            label_map=self.label_map, form=self.form, crop=self.source_crop, shift=self.shift,
                                            scale=self.scale, seed=self.seed)
        except ValueError as e:
            raise UserError(f"--{str(e).replace('_', '-')}") from None


def untrained_twin(options: dict, seed: int, device: torch.device):
    """A network of the victim's architecture and input shape with fresh random weights, in eval mode."""
    from rlab.vision.models import build_model

    torch.manual_seed(seed)
    return build_model(options["model"], options["num_classes"], options["in_channels"], options["image_size"]).to(device).eval()


def split_source(train, test, n_train: int, validate: int, seed: int):
    """(x_train, y_train, x_heldout, y_heldout, scored_on): with validate > 0 the held-out images are a fixed draw of
    `validate` training images and the test split is never read; n_train (0: all the rest) are drawn from the rest."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    held, rest = order[:validate].sort().values, order[validate:]
    picks = rest[:n_train or len(rest)].sort().values
    x_train, y_train = train.float(picks), train.labels[picks]
    if validate:
        return x_train, y_train, train.float(held), train.labels[held], f"validation ({validate} training images)"
    return x_train, y_train, test.float(), test.labels, "test"


def plot_accuracy(results: dict[str, Any], rows: list[dict[str, Any]], chance: float, title: str, out) -> Any:
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    for i, (row, (victim, result)) in enumerate(zip(rows, results.items())):
        epochs = range(1, len(result.accuracy) + 1)
        color = plt.get_cmap("tab10")(i)
        ax.plot(epochs, [100 * a for a in result.accuracy], "-o", ms=3, color=color, label=f"{victim}: training digits")
        ax.plot([len(result.accuracy)], [100 * row["heldout_accuracy"]], "*", ms=12, color=color,
                label=f"{victim}: held-out digits {100 * row['heldout_accuracy']:.1f}%")
    ax.axhline(100 * chance, color="k", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("epoch (passes over the source's training split)")
    ax.set_ylabel("source-task accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out)


def spread_over_classes(y: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k images taking the classes in turn (the first unused image of each), so that a split sorted by
    label still shows every class."""
    by_class = [torch.nonzero(y == c).flatten().tolist() for c in y.unique().tolist()]
    picks = [idx[i] for i in range(max(map(len, by_class))) for idx in by_class if i < len(idx)]
    return torch.tensor(picks[:k], dtype=torch.long)


def plot_gallery(models: dict[str, Any], results: dict[str, Any], x: torch.Tensor, y: torch.Tensor, k: int, out,
                 moves: bool = False) -> Any:
    """One row per victim: held-out digits through its program, titled with the reprogrammed answer (scored as the
    table scores it: with `moves`, averaged over the digit's one-pixel moves)."""
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    picks = spread_over_classes(y, k)
    xb, yb, k = x[picks], y[picks], len(picks)
    fig, axes = plt.subplots(len(results), k, figsize=(1.45 * k + 0.6, 1.75 * len(results) + 0.5), dpi=120, squeeze=False)
    for row, (victim, result) in enumerate(results.items()):
        with torch.no_grad():
            host = result.program(xb)
            answers = reprogrammed_log_probs(models[victim], result.program, xb, moves).argmax(1)
        for i in range(k):
            ax = axes[row, i]
            ax.imshow(host[i].permute(1, 2, 0).cpu().numpy().clip(0, 1).squeeze(), cmap="gray" if host.shape[1] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"→ {int(answers[i])}", fontsize=8, color="k" if answers[i] == yb[i] else "r")
        axes[row, 0].set_ylabel(victim, fontsize=8)
    fig.suptitle("Reprogrammed held-out digits and the victim's mapped answer (red: wrong)", fontsize=9)
    return save_figure(fig, out)


def run(cfg: ReprogramConfig) -> Any:
    from rlab.vision.classifier import load_classifier
    from rlab.vision.data import load_dataset
    from rlab.vision.patch_bench import draw

    set_threads(cfg.threads, "cnn")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    victim, options = load_classifier(cfg.classifier, device)
    host_shape = (options["in_channels"], options["image_size"], options["image_size"])
    train = load_dataset(cfg.source, "train", cfg.data_dir)
    test = None if cfg.validate else load_dataset(cfg.source, "test", cfg.data_dir)  # --validate never reads it
    source_size = cfg.source_size or (train.image_size if cfg.form == "frame" else options["image_size"])
    n_classes = len(train.classes)
    label_map = cfg.label_map or list(range(n_classes))
    check(len(label_map) == n_classes, f"--label-map needs one victim class per source class ({n_classes}), "
                                       f"got {len(label_map)}")
    check(max(label_map) < options["num_classes"], f"--label-map values must be victim classes in "
                                                   f"[0, {options['num_classes'] - 1}], got {max(label_map)}")
    check(n_classes <= options["num_classes"], f"{cfg.source} has {n_classes} classes but the victim only "
                                               f"{options['num_classes']}")
    check(source_size <= options["image_size"], f"--source-size {source_size} does not fit the victim's "
                                                f"{options['image_size']}x{options['image_size']} input")
    check(cfg.form != "frame" or source_size < options["image_size"],
          f"--source-size {source_size} fills the victim's {options['image_size']}x{options['image_size']} input: the "
          f"frame form has no pixels left (give a smaller --source-size or --form full / affine)")
    check(cfg.validate + max(cfg.n_train, 1) <= len(train), f"--validate {cfg.validate} holds out too many of the "
          f"{len(train)} training images: at most {len(train) - max(cfg.n_train, 1)} with --n-train {cfg.n_train}")
    check(train.channels in (1, options["in_channels"]), f"{cfg.source} has {train.channels}-channel images; the victim "
                                                        f"takes {options['in_channels']}")
    check(2 * cfg.source_crop < train.image_size, f"--source-crop {cfg.source_crop} leaves nothing of the "
                                                  f"{train.image_size}x{train.image_size} {cfg.source} images")
    x_train, y_train, x_test, y_test, scored_on = split_source(train, test, cfg.n_train, cfg.validate, cfg.seed)
    x_train, y_train, x_test, y_test = x_train.to(device), y_train.to(device), x_test.to(device), y_test.to(device)
    run_dir = RunDir.create("bench", f"reprogram__{cfg.source.replace(':', '-')}__{options['model']}", cfg.seed, cfg, device)
    start = time.perf_counter()
    models = {"trained": victim}
    if cfg.control:
        models["untrained"] = untrained_twin(options, cfg.seed, device)
    initial = AdversarialProgram(host_shape, source_size, label_map, cfg.form, cfg.source_crop).to(device)  # W = 0
    attack = dataclasses.replace(cfg.attack(), label_map=label_map, source_size=source_size)
    rows, results = [], {}
    for name, model in tqdm(models.items(), desc="victims", unit="victim"):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        t0, c0 = time.perf_counter(), time.process_time()
        result = attack(model, x_train, y_train, host_shape)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
            raise RuntimeError("reprogramming changed the victim's weights or batch-norm statistics")
        results[name] = result
        rows.append({"victim": name, "source": cfg.source, "form": cfg.form, "source_size": source_size,
                     "source_crop": cfg.source_crop, "shift": cfg.shift, "scale": cfg.scale, "test_moves": cfg.test_moves,
                     "program_pixels": result.program.program_size,
                     "program_share": round(result.program.program_size / (host_shape[1] * host_shape[2]), 4),
                     "epochs": cfg.epochs, "scored_on": scored_on,
                     "heldout_accuracy": round(reprogrammed_accuracy(model, result.program, x_test, y_test,
                                                                     moves=cfg.test_moves), 4),
                     "train_accuracy": round(result.accuracy[-1], 4),
                     "initial_program_accuracy": round(reprogrammed_accuracy(model, initial, x_test, y_test,
                                                                             moves=cfg.test_moves), 4),
                     "grad_steps": result.grad_steps, "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2)})
    write_csv(run_dir.path / "results.csv", rows, RESULT_COLUMNS)
    save_checkpoint(run_dir.path / "checkpoints" / "programs.pt",
                    {name: {k: v.detach().cpu() for k, v in r.program.named_parameters()} for name, r in results.items()})
    what = f"{options['model']} ({options['dataset']})"
    where = {"frame": f"fills the frame around it (budget: {rows[0]['program_pixels']} pixels x {host_shape[0]} channels, "
                      f"{100 * rows[0]['program_share']:.1f}% of the image)",
             "full": "is added over the whole image, clipped to [0, 1] (budget: every pixel, unbounded)",
             "affine": "sets every pixel's paper colour and the input's ink colour (budget: every pixel, unbounded)"}[cfg.form]
    plot_accuracy(results, rows, 1 / n_classes, f"Reprogramming {what} to classify {cfg.source}\n"
                  f"({source_size}x{source_size} input, {cfg.form} program: {rows[0]['program_pixels']} pixels)",
                  run_dir.path / "accuracy.png")
    report = [f"# Adversarial reprogramming: {what} → {cfg.source}", "",
              f"Victim: `{cfg.classifier}`. Elsayed et al. 2018: each {cfg.source} image is embedded as "
              f"{source_size}x{source_size} at the centre of the {host_shape[1]}x{host_shape[2]} input; a learned "
              f"{cfg.form} program {where}; victim class label_map[k] answers source class k "
              f"(label_map {label_map}). Adam (lr {cfg.lr:g}, λ {cfg.weight_decay:g}), {cfg.epochs} epochs of "
              f"{len(x_train)} training images in batches of {cfg.batch_size}; scored on {scored_on}: {len(x_test)} "
              f"images not trained on. The victim's weights are frozen (checked after training). 'W = 0': the program "
              f"before training."
              + (f" The source images lose {cfg.source_crop} pixels off each border before the resize." if cfg.source_crop else "")
              + (f" Training digits jittered: moved by up to {cfg.shift:g} pixels, zoomed by up to ±{cfg.scale:g}."
                 if cfg.shift or cfg.scale else "")
              + (" Held-out scores average the victim's log-probabilities over each digit and its four one-pixel moves."
                 if cfg.test_moves else ""), "",
              "| victim | program (pixels, share) | held-out accuracy | training accuracy (last epoch) | W = 0 | "
              "grad steps | seconds (CPU) |", "|---|---|---|---|---|---|---|"]
    report += [f"| {r['victim']} | {r['program_pixels']}, {100 * r['program_share']:.1f}% | "
               f"{100 * r['heldout_accuracy']:.1f}% | {100 * r['train_accuracy']:.1f}% | "
               f"{100 * r['initial_program_accuracy']:.1f}% | {r['grad_steps']} | {r['seconds']:.1f} "
               f"({r['cpu_seconds']:.1f}) |" for r in rows]
    report += ["", "![accuracy](accuracy.png)", ""]
    if cfg.gallery:
        plot_gallery(models, results, x_test, y_test, cfg.gallery, run_dir.path / "gallery.png", cfg.test_moves)
        report += ["## Gallery", "", "![gallery](gallery.png)", ""]
    atomic_write_text(run_dir.path / "report.md", "\n".join(report))
    summary: dict[str, Any] = {"source": cfg.source, "form": cfg.form, "source_size": source_size, "label_map": label_map,
                               "scored_on": scored_on,
                               "program_pixels": rows[0]["program_pixels"], "wall_seconds": time.perf_counter() - start}
    for r in rows:
        summary[f"heldout_accuracy/{r['victim']}"] = r["heldout_accuracy"]
    run_dir.write_summary(summary)
    return run_dir.path
