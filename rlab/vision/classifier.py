"""Train and evaluate the image classifiers that the attacks and defenses are measured on.

    rlab classifier train --dataset mnist5k --model mnist_cnn --epochs 15
    rlab classifier train --dataset cifar10-jpg --model fastnet --epochs 10
    rlab classifier train --dataset mnist5k --adv pgd --eps 0.3
    rlab classifier eval RUN_DIR [--dataset imagefolder:PATH] [--per-class 20]

Training is minibatch SGD with Nesterov momentum under a one-cycle learning-rate
schedule (Smith & Topin, 2019, "Super-Convergence"), label smoothing (Szegedy
et al., 2016) and, for RGB images, random-crop + horizontal-flip augmentation;
on CUDA it runs in bfloat16 autocast with channels-last tensors. With --adv the
minibatch step is `defenses.AdversarialTraining` (Madry et al., 2018, PGD;
Wong et al., 2020, "fast"; Shafahi et al., 2019, "free").

Run folders: runs/classifier/<dataset>__<model>__<seed>__<time>/ with
metrics.csv (one row per epoch), learning_curve.png, checkpoints/last.pt
(written every epoch; --resume RUN_DIR continues it) and summary.json
(test/accuracy, wall_seconds).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlab.config import check, opt
from rlab.vision.data import DATASET_NAMES, ImageData, course_subset, load_dataset
from rlab.errors import TrainingDiverged, UserError, diverged, first_nonfinite, load_state_checked
from rlab.vision.models import MODEL_NAMES, build_model, default_lr
from rlab.runs import RunDir, rng_state
from rlab.runtime import DEVICES, resolve_device, seed_everything, set_threads

ADV_METHODS = ("none", "pgd", "fast", "free")
AUGMENTATIONS = ("auto", "none", "crop", "crop-flip")


@dataclass
class TrainConfig:
    dataset: str = opt("mnist5k", help=f"dataset: {', '.join(DATASET_NAMES)}")
    model: str = opt("auto", help="model name (auto: mnist_cnn for 1 channel, fastnet for RGB)",
                     choices=["auto", *MODEL_NAMES])
    epochs: int = opt(10, help="passes over the training set")
    batch_size: int = opt(256, help="minibatch size")
    lr: float | None = opt(None, help="peak learning rate of the one-cycle schedule (default: the model's)")
    momentum: float = opt(0.9, help="Nesterov momentum")
    weight_decay: float = opt(5e-4, help="L2 weight decay")
    label_smoothing: float = opt(0.1, help="label smoothing of the cross-entropy loss")
    augment: str = opt("auto", help="augmentation (auto: crop-flip for RGB, crop for greyscale)", choices=list(AUGMENTATIONS))
    train_subset: int = opt(0, help="train on the first N shuffled training images only (0: all)")
    seed: int = opt(0, help="seed for Python, NumPy and torch")
    device: str = opt("auto", help="device", choices=list(DEVICES))
    threads: int = opt(0, help="torch threads (0: every core up to 8)")
    data_dir: str | None = opt(None, help="folder holding the dataset files (cifar10, cifar10-jpg)")
    adv: str = opt("none", help="adversarial training method", choices=list(ADV_METHODS))
    eps: float = opt(0.0, help="L-inf radius of adversarial training, e.g. 8/255")
    adv_alpha: float | None = opt(None, help="adversarial step size (default: the method's)")
    adv_steps: int | None = opt(None, help="PGD steps of adversarial training (default: the method's)")
    adv_replays: int | None = opt(None, help="minibatch replays of free adversarial training (default: the method's)")
    adv_ramp: float = opt(0.0, help="fraction of training over which the adversarial eps ramps up from 0 "
                                    "(0: full eps from the start; 0.5 keeps MNIST at eps 0.3 from collapsing)")
    optimizer: str = opt("sgd", help="optimizer (SGD with Nesterov momentum, or Adam)", choices=["sgd", "adam"])
    warmup: float = opt(0.25, help="fraction of the one-cycle schedule spent warming up to the peak lr")
    pretrained: bool = opt(False, help="start from pytorchcv's released weights (needs a network)")
    resume: str | None = opt(None, help="continue the run in this folder from its last checkpoint")

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}")
        check(self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}")
        check(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.train_subset >= 0, f"--train-subset must be >= 0, got {self.train_subset}")
        check(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")
        check(0 <= self.adv_ramp <= 1, f"--adv-ramp must be in [0, 1], got {self.adv_ramp}")
        check(0 < self.warmup < 1, f"--warmup must be in (0, 1), got {self.warmup}")
        _check_dataset_name(self.dataset)
        if self.adv == "none":
            check(self.eps == 0, "--eps is the radius of adversarial training: give it together with --adv pgd|fast|free")
        else:
            check(0 < self.eps <= 1, f"--adv {self.adv} needs --eps in (0, 1] (images are in [0, 1]), got {self.eps}")


@dataclass
class EvalConfig:
    run_dir: str = opt(help="a classifier run folder", positional=True)
    dataset: str | None = opt(None, help="dataset to evaluate on (default: the one it was trained on)")
    split: str = opt("test", help="which split", choices=["train", "test"])
    per_class: int = opt(0, help="evaluate on a fixed draw of N images per class (the course uses 20; 0: all)")
    data_dir: str | None = opt(None, help="folder holding the dataset files")
    batch_size: int = opt(500, help="evaluation batch size")
    tta: bool = opt(False, help="test-time augmentation: average the logits of x and its mirror image")
    seed: int = opt(0, help="seed of the per-class draw")
    device: str = opt("auto", help="device", choices=list(DEVICES))
    threads: int = opt(0, help="torch threads (0: every core up to 8)")

    def __post_init__(self) -> None:
        check(self.per_class >= 0, f"--per-class must be >= 0, got {self.per_class}")
        check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        if self.dataset is not None:
            _check_dataset_name(self.dataset)


def _check_dataset_name(name: str) -> None:
    if name not in DATASET_NAMES[:-1] and not name.startswith("imagefolder:"):
        from rlab.errors import unknown_name

        raise unknown_name("dataset", name, DATASET_NAMES)


# ----------------------------------------------------------------------------- pieces


def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image by up to `pad` pixels: reflect-pad, then crop back at a random offset."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
                  rows, cols]


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augmentation_for(augment: str, channels: int) -> str:
    if augment == "auto":
        return "crop-flip" if channels == 3 else "crop"
    return augment


def augment_batch(x: torch.Tensor, augment: str) -> torch.Tensor:
    if augment in ("crop", "crop-flip"):
        x = random_crop(x, pad=2 if x.shape[-1] <= 28 else 4)
    if augment == "crop-flip":
        x = random_flip(x)
    return x


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


@torch.no_grad()
def predict_logits(model: nn.Module, data: ImageData, device: torch.device, batch_size: int = 500,
                   tta: bool = False) -> torch.Tensor:
    """Logits (N, classes) of an eval-mode model; with tta, the mean over x and its mirror image."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        x = _to_device(data.float(slice(start, start + batch_size)), device)
        with _autocast(device):
            logits = model(x).float()
            if tta:
                logits = (logits + model(x.flip(3)).float()) / 2
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.empty(0, len(data.classes))


def accuracy_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    return (logits.argmax(1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item()


def one_cycle(step: int, total_steps: int, warmup_fraction: float = 0.25) -> float:
    """Learning-rate factor of the one-cycle schedule (a triangle, Smith & Topin, 2019).

    With w = max(1, round(warmup_fraction * T)) warm-up steps of T in all:
        factor(t) = (t + 1) / w          for t < w   (linear warm-up to the peak)
        factor(t) = (T - t) / (T - w)    for t >= w  (linear decay towards 0 at t = T)
    """
    w = max(1, round(warmup_fraction * total_steps))
    if step < w:
        return (step + 1) / w
    return max(0.0, (total_steps - step) / max(1, total_steps - w))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Minibatches per epoch; a last batch of one image is dropped (BatchNorm needs two)."""
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def _plot_learning_curve(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    epochs = [r["epoch"] for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(epochs, [r["train/accuracy"] for r in rows], "o-", label="train")
    ax_acc.plot(epochs, [r["test/accuracy"] for r in rows], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=title)
    ax_loss.plot(epochs, [r["train/loss"] for r in rows], "o-", label="train (augmented, smoothed labels)")
    ax_loss.plot(epochs, [r["test/loss"] for r in rows], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def _adversarial_trainer(cfg: TrainConfig):
    from defenses import AdversarialTraining

    return AdversarialTraining(cfg.adv, cfg.eps, alpha=cfg.adv_alpha, steps=cfg.adv_steps, replays=cfg.adv_replays)


# ----------------------------------------------------------------------------- train


def _resumed_config(cfg: TrainConfig) -> tuple[TrainConfig, RunDir]:
    run = RunDir.open(cfg.resume)
    saved = dict(run.config["options"])
    if run.config.get("kind") != "classifier" or "dataset" not in saved or "epochs" not in saved:
        raise UserError(f"{cfg.resume} is not a classifier run folder of `rlab classifier train`")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in saved.items() if k in known}
    saved["resume"] = cfg.resume
    if cfg.device != "auto":
        saved["device"] = cfg.device
    if cfg.threads:
        saved["threads"] = cfg.threads
    return TrainConfig(**saved), run


def train(cfg: TrainConfig) -> Path:
    """Train a classifier; returns its run folder."""
    run = None
    if cfg.resume:
        cfg, run = _resumed_config(cfg)
    set_threads(cfg.threads, "cnn")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    train_data = load_dataset(cfg.dataset, "train", cfg.data_dir)
    test_data = load_dataset(cfg.dataset, "test", cfg.data_dir)
    if (train_data.channels, train_data.image_size) != (test_data.channels, test_data.image_size):
        raise UserError(f"{cfg.dataset}: train and test images differ in shape")
    if cfg.train_subset:
        train_data = train_data.subset(torch.randperm(len(train_data))[: cfg.train_subset])
    model_name = cfg.model if cfg.model != "auto" else ("mnist_cnn" if train_data.channels == 1 else "fastnet")
    meta = {"model": model_name, "num_classes": len(train_data.classes), "in_channels": train_data.channels,
            "image_size": train_data.image_size, "classes": list(train_data.classes), "dataset": cfg.dataset}
    model = build_model(model_name, meta["num_classes"], meta["in_channels"], meta["image_size"],
                        pretrained=cfg.pretrained and not cfg.resume).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    lr = cfg.lr or default_lr(model_name)
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                    weight_decay=cfg.weight_decay)
    n_steps = steps_per_epoch(len(train_data), cfg.batch_size)
    total_steps = cfg.epochs * n_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(one_cycle, total_steps=total_steps,
                                                                                  warmup_fraction=cfg.warmup))
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)
    adv_trainer = _adversarial_trainer(cfg) if cfg.adv != "none" else None
    if adv_trainer is not None:
        from defenses.adversarial_training import ramped_eps
    augment = augmentation_for(cfg.augment, train_data.channels)

    start_epoch, step, train_seconds = 0, 0, 0.0
    if run is None:
        run = RunDir.create("classifier", f"{cfg.dataset.replace(':', '-')}__{model_name}", cfg.seed, cfg, device=device)
    elif (run.path / "checkpoints" / "last.pt").exists():
        start_epoch, step, train_seconds = run.restore({"model": model, "optimizer": optimizer, "scheduler": scheduler},
                                                       ("epoch", "step", "train_seconds"), "rlab classifier train",
                                                       map_location=device)
    # (a run killed before its first checkpoint starts again from step 0 in the same folder)
    run.truncate_metrics(step)

    from tqdm import tqdm

    wall_start = time.perf_counter()
    images, labels = train_data.images.to(device), train_data.labels.to(device)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        total_loss = total_correct = seen = 0.0
        order = torch.randperm(len(train_data)).to(device)
        batches = [b for b in order.split(cfg.batch_size) if len(b) >= 2]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
        for idx in bar:
            x = _to_device(augment_batch(images[idx].float().div_(255), augment), device)
            y = labels[idx]
            if adv_trainer is not None:
                with _autocast(device):
                    eps_now = max(ramped_eps(cfg.eps, step / total_steps, cfg.adv_ramp), 1e-3) if cfg.adv_ramp else None
                    loss, logits = adv_trainer.step(model, x, y, optimizer, loss_fn, eps=eps_now)
            else:
                with _autocast(device):
                    logits = model(x)
                    loss = loss_fn(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            lr_used = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise _diverged(step, epoch, "the training loss", run, lr)
            total_loss += loss_value * len(y)
            total_correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_value:.3f}")
        train_seconds += time.perf_counter() - t0
        bad = first_nonfinite(model.state_dict())
        if bad is not None:
            raise _diverged(step, epoch, f"weight {bad}", run, lr)
        test_acc, test_loss = accuracy_and_loss(predict_logits(model, test_data, device), test_data.labels)
        run.log(step, **{"epoch": epoch + 1, "train/loss": total_loss / seen, "train/accuracy": total_correct / seen,
                         "test/accuracy": test_acc, "test/loss": test_loss, "charts/lr": lr_used,
                         "time/train_seconds": train_seconds}, flush=True)
        run.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step,
                             "train_seconds": train_seconds, "rng": rng_state(), "meta": meta})
        _plot_learning_curve(run.metrics, run.path / "learning_curve.png", f"{cfg.dataset} / {model_name}")
    last = run.metrics[-1] if run.metrics else {}
    run.write_summary({"test/accuracy": last.get("test/accuracy"), "test/loss": last.get("test/loss"),
                       "train/accuracy": last.get("train/accuracy"), "epochs": cfg.epochs,
                       "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - wall_start,
                       "model": model_name, "dataset": cfg.dataset, "num_train": len(train_data),
                       "num_test": len(test_data), "num_params": sum(p.numel() for p in model.parameters())})
    return run.path


def _diverged(step: int, epoch: int, what: str, run: RunDir, lr: float) -> TrainingDiverged:
    """A NaN/inf at `step`: the checkpoint of the last finished epoch is kept."""
    return diverged(f"step {step} (epoch {epoch + 1})", what, f"end of epoch {epoch}" if epoch > 0 else None,
                    run.path / "checkpoints" / "last.pt", lr)


# ----------------------------------------------------------------------------- load and evaluate


def load_classifier(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained model of a classifier run folder, in eval mode on `device`, and its options.

    The options are config.json's training options plus `model`, `num_classes`,
    `in_channels`, `image_size`, `classes` and `dataset` from the checkpoint.
    """
    run = RunDir.open(run_dir)
    state = run.load_checkpoint("last.pt", map_location="cpu")
    if not isinstance(state, dict) or "meta" not in state or "model" not in state:
        raise UserError(f"{run_dir} is not a classifier run folder (its checkpoint has no model metadata)")
    meta = state["meta"]
    try:
        model = build_model(meta["model"], meta["num_classes"], meta["in_channels"], meta["image_size"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{run_dir}: the checkpoint's model metadata is unreadable ({type(e).__name__}: {e})") from None
    load_state_checked(model, state, "model", run.path / "checkpoints" / "last.pt")
    device = resolve_device(device) if isinstance(device, str) else device
    return model.to(device).eval(), {**run.config["options"], **meta}


def evaluate(cfg: EvalConfig) -> Path:
    """Accuracy of a trained classifier on a dataset split (optionally the 20-per-class course subset)."""
    set_threads(cfg.threads, "cnn")
    device = resolve_device(cfg.device)
    model, options = load_classifier(cfg.run_dir, device)
    dataset = cfg.dataset or options["dataset"]
    data = load_dataset(dataset, cfg.split, cfg.data_dir or options.get("data_dir"))
    if (data.channels, data.image_size) != (options["in_channels"], options["image_size"]):
        raise UserError(f"{dataset} has {data.channels}x{data.image_size}x{data.image_size} images but the model "
                        f"takes {options['in_channels']}x{options['image_size']}x{options['image_size']}")
    if len(data.classes) != options["num_classes"]:
        raise UserError(f"{dataset} has {len(data.classes)} classes but the model has {options['num_classes']}")
    if cfg.per_class:
        data = course_subset(data, cfg.per_class, cfg.seed)
    t0 = time.perf_counter()
    logits = predict_logits(model, data, device, cfg.batch_size, tta=cfg.tta)
    acc, loss = accuracy_and_loss(logits, data.labels)
    correct = logits.argmax(1) == data.labels
    per_class = {cls: correct[data.labels == c].float().mean().item() for c, cls in enumerate(data.classes)
                 if (data.labels == c).any()}
    run = RunDir.create("classifier-eval", f"{dataset.replace(':', '-')}__{options['model']}", cfg.seed, cfg, device=device)
    run.write_summary({"test/accuracy": acc, "test/loss": loss, "num_images": len(data), "per_class/accuracy": per_class,
                       "dataset": dataset, "split": cfg.split, "source_run": str(cfg.run_dir),
                       "wall_seconds": time.perf_counter() - t0})
    return run.path
