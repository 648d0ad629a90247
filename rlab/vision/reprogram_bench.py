"""`rlab bench reprogram`: make a trained classifier solve another task through a learned frame.

Elsayed et al. 2018, "Adversarial Reprogramming of Neural Networks"
(attacks.reprogramming): the source task's images (MNIST-5k digits by default)
are embedded at the centre of the victim's input, a learned additive program
fills the frame around them, and victim class k stands for source class
label_map[k]. The program is trained on the source's training split and scored
on its held-out split; the same program is trained, with the same budget,
against an untrained network of the victim's shape (the control: how much of
the result is the trained network's features, not the program's capacity).
Writes into one run folder:

    results.csv      victim, source, source_size, program_pixels, program_share, epochs,
                     test_accuracy, train_accuracy, grey_frame_accuracy, grad_steps, seconds
    accuracy.png     training accuracy per epoch, held-out accuracy at the end, both victims
    gallery.png      reprogrammed inputs of held-out digits with the victim's (mapped) answers
    report.md        the table and both figures
    checkpoints/programs.pt   the programs' W, {"trained": (C, H, W), "untrained": ...}
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from attacks.reprogramming import AdversarialProgram, AdversarialReprogramming, Reprogrammed, reprogrammed_accuracy
from rlab.config import check, opt
from rlab.errors import UserError
from rlab.runs import RunDir, atomic_write_text, save_checkpoint, write_csv
from rlab.runtime import DEVICES, resolve_device, seed_everything, set_threads

RESULT_COLUMNS = ["victim", "source", "source_size", "program_pixels", "program_share", "epochs", "test_accuracy",
                  "train_accuracy", "grey_frame_accuracy", "grad_steps", "seconds"]


@dataclass
class ReprogramConfig:
    classifier: str = opt(None, "run folder of the victim classifier (rlab classifier train)")
    source: str = opt("mnist5k", "the source task's dataset (its train split trains the program, its test split scores it)")
    source_size: int = opt(12, "side in pixels of the embedded source image (0: its own size, 28 for MNIST, which "
                               "leaves a 2-pixel frame)")
    label_map: list[int] | None = opt(None, "victim class for each source class, e.g. 3,1,0,... (default: class k -> k)")
    n_train: int = opt(0, "train the program on N source training images only, a fixed random draw (0: all)")
    epochs: int = opt(AdversarialReprogramming.epochs, "passes over the source's training split")
    batch_size: int = opt(AdversarialReprogramming.batch_size, "source images per Adam step")
    lr: float = opt(AdversarialReprogramming.lr, "Adam learning rate on the program W")
    weight_decay: float = opt(AdversarialReprogramming.weight_decay, "L2 penalty lambda on W (Elsayed et al.'s regulariser)")
    control: bool = opt(True, "also train the program against an untrained network of the victim's shape")
    gallery: int = opt(8, "reprogrammed digits in the gallery (0: none)")
    data_dir: str | None = opt(None, "folder holding the dataset files")
    seed: int = opt(0, "seed of the minibatch order and of the untrained control's weights")
    device: str = opt("auto", "device", choices=list(DEVICES))
    threads: int = opt(0, "torch threads (0: every core up to 8)")

    def __post_init__(self) -> None:
        check(self.classifier is not None, "--classifier RUN_DIR is required (a run folder of `rlab classifier train`)")
        check(self.source_size >= 0, f"--source-size must be >= 0 (0: the source's own size), got {self.source_size}")
        check(self.gallery >= 0, f"--gallery must be >= 0, got {self.gallery}")
        check(self.n_train >= 0, f"--n-train must be >= 0 (0: all), got {self.n_train}")
        if self.label_map is not None:
            check(len(set(self.label_map)) == len(self.label_map) and min(self.label_map) >= 0,
                  f"--label-map must list distinct victim classes >= 0, got {','.join(map(str, self.label_map))}")
        self.attack()

    def attack(self) -> AdversarialReprogramming:
        """The AdversarialReprogramming these options describe (a bad value is a UserError naming the option)."""
        try:
            return AdversarialReprogramming(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                            weight_decay=self.weight_decay, source_size=self.source_size or None,
                                            label_map=self.label_map, seed=self.seed)
        except ValueError as e:
            raise UserError(f"--{str(e).replace('_', '-')}") from None


def untrained_twin(options: dict, seed: int, device: torch.device):
    """A network of the victim's architecture and input shape with fresh random weights, in eval mode."""
    from rlab.vision.models import build_model

    torch.manual_seed(seed)
    return build_model(options["model"], options["num_classes"], options["in_channels"], options["image_size"]).to(device).eval()


def plot_accuracy(results: dict[str, Any], rows: list[dict[str, Any]], chance: float, title: str, out) -> Any:
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    for i, (row, (victim, result)) in enumerate(zip(rows, results.items())):
        epochs = range(1, len(result.accuracy) + 1)
        color = plt.get_cmap("tab10")(i)
        ax.plot(epochs, [100 * a for a in result.accuracy], "-o", ms=3, color=color, label=f"{victim}: training digits")
        ax.plot([len(result.accuracy)], [100 * row["test_accuracy"]], "*", ms=12, color=color,
                label=f"{victim}: held-out digits {100 * row['test_accuracy']:.1f}%")
    ax.axhline(100 * chance, color="k", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("epoch (passes over the source's training split)")
    ax.set_ylabel("source-task accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out)


def plot_gallery(models: dict[str, Any], results: dict[str, Any], x: torch.Tensor, y: torch.Tensor, k: int, out) -> Any:
    """One row per victim: held-out digits through its program, titled with the reprogrammed answer."""
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    k = min(k, len(x))
    xb, yb = x[:k], y[:k]
    fig, axes = plt.subplots(len(results), k, figsize=(1.45 * k + 0.6, 1.75 * len(results) + 0.5), dpi=120, squeeze=False)
    for row, (victim, result) in enumerate(results.items()):
        with torch.no_grad():
            host = result.program(xb)
            answers = Reprogrammed(models[victim], result.program)(xb).argmax(1)
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
    test = load_dataset(cfg.source, "test", cfg.data_dir)
    source_size = cfg.source_size or train.image_size
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
    check(train.channels in (1, options["in_channels"]), f"{cfg.source} has {train.channels}-channel images; the victim "
                                                        f"takes {options['in_channels']}")
    x_train, y_train = draw(train, cfg.n_train or len(train), cfg.seed)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = test.float().to(device), test.labels.to(device)
    run_dir = RunDir.create("bench", f"reprogram__{cfg.source.replace(':', '-')}__{options['model']}", cfg.seed, cfg, device)
    start = time.perf_counter()
    models = {"trained": victim}
    if cfg.control:
        models["untrained"] = untrained_twin(options, cfg.seed, device)
    grey = AdversarialProgram(host_shape, source_size, label_map).to(device)
    attack = dataclasses.replace(cfg.attack(), label_map=label_map, source_size=source_size)
    rows, results = [], {}
    for name, model in tqdm(models.items(), desc="victims", unit="victim"):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        t0 = time.perf_counter()
        result = attack(model, x_train, y_train, host_shape)
        seconds = time.perf_counter() - t0
        if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
            raise RuntimeError("reprogramming changed the victim's weights or batch-norm statistics")
        results[name] = result
        rows.append({"victim": name, "source": cfg.source, "source_size": source_size,
                     "program_pixels": result.program.program_size,
                     "program_share": round(result.program.program_size / (host_shape[1] * host_shape[2]), 4),
                     "epochs": cfg.epochs, "test_accuracy": round(reprogrammed_accuracy(model, result.program, x_test, y_test), 4),
                     "train_accuracy": round(result.accuracy[-1], 4),
                     "grey_frame_accuracy": round(reprogrammed_accuracy(model, grey, x_test, y_test), 4),
                     "grad_steps": result.grad_steps, "seconds": round(seconds, 2)})
    write_csv(run_dir.path / "results.csv", rows, RESULT_COLUMNS)
    save_checkpoint(run_dir.path / "checkpoints" / "programs.pt",
                    {name: r.program.weight.detach().cpu() for name, r in results.items()})
    what = f"{options['model']} ({options['dataset']})"
    plot_accuracy(results, rows, 1 / n_classes, f"Reprogramming {what} to classify {cfg.source}\n"
                  f"({source_size}x{source_size} input, program: {rows[0]['program_pixels']} frame pixels)",
                  run_dir.path / "accuracy.png")
    report = [f"# Adversarial reprogramming: {what} → {cfg.source}", "",
              f"Victim: `{cfg.classifier}`. Elsayed et al. 2018: each {cfg.source} image is embedded as "
              f"{source_size}x{source_size} at the centre of the {host_shape[1]}x{host_shape[2]} input; a learned "
              f"additive program fills the frame (budget: {rows[0]['program_pixels']} pixels x {host_shape[0]} channels, "
              f"{100 * rows[0]['program_share']:.1f}% of the image); victim class label_map[k] answers source class k "
              f"(label_map {label_map}). Adam (lr {cfg.lr:g}, λ {cfg.weight_decay:g}), {cfg.epochs} epochs of "
              f"{len(x_train)} training images in batches of {cfg.batch_size}; scored on the {len(x_test)} held-out "
              f"images. The victim's weights are frozen (checked after training). 'grey frame': the program before "
              f"training (frame at 0.5).", "",
              "| victim | program (pixels, share) | held-out accuracy | training accuracy (last epoch) | grey frame | "
              "grad steps | seconds |", "|---|---|---|---|---|---|---|"]
    report += [f"| {r['victim']} | {r['program_pixels']}, {100 * r['program_share']:.1f}% | "
               f"{100 * r['test_accuracy']:.1f}% | {100 * r['train_accuracy']:.1f}% | {100 * r['grey_frame_accuracy']:.1f}% | "
               f"{r['grad_steps']} | {r['seconds']:.1f} |" for r in rows]
    report += ["", "![accuracy](accuracy.png)", ""]
    if cfg.gallery:
        plot_gallery(models, results, x_test, y_test, cfg.gallery, run_dir.path / "gallery.png")
        report += ["## Gallery", "", "![gallery](gallery.png)", ""]
    atomic_write_text(run_dir.path / "report.md", "\n".join(report))
    summary: dict[str, Any] = {"source": cfg.source, "source_size": source_size, "label_map": label_map,
                               "program_pixels": rows[0]["program_pixels"], "wall_seconds": time.perf_counter() - start}
    for r in rows:
        summary[f"test_accuracy/{r['victim']}"] = r["test_accuracy"]
    run_dir.write_summary(summary)
    return run_dir.path
