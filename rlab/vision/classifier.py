"""Train and evaluate the image classifiers that the attacks and defenses are measured on.

    rlab classifier train --dataset mnist5k --model mnist_cnn --epochs 15
    rlab classifier train --dataset cifar10-jpg --model fastnet --epochs 10
    rlab classifier train --dataset mnist5k --adv pgd --eps 0.3
    rlab classifier train --dataset mnist5k --noise-sd 0.25
    rlab classifier train --dataset mnist5k --poison badnets --poison-rate 0.05 --target 0 --trigger checker:4:br
    rlab classifier train ... --poison badnets ... --remove-suspects POISONED_RUN [--detector spectral]
    rlab classifier eval RUN_DIR [--dataset imagefolder:PATH] [--per-class 20]

Training is minibatch SGD with Nesterov momentum under a one-cycle learning-rate
schedule (Smith & Topin, 2019, "Super-Convergence"), label smoothing (Szegedy
et al., 2016) and, for RGB images, random-crop + horizontal-flip augmentation;
on CUDA (or anywhere with --precision bf16: ~3x faster on a CPU with AMX) it runs in
bfloat16 autocast with channels-last tensors. With --adv the
minibatch step is `defenses.AdversarialTraining` (Madry et al., 2018, PGD;
Wong et al., 2020, "fast"; Shafahi et al., 2019, "free"). With --noise-sd every
minibatch gets Gaussian noise, `defenses.gaussian_noise` (Cohen et al., 2019: the
base classifier of randomized smoothing, certified by `rlab bench certify`).

With --poison badnets the training set (never the test set) goes through
`attacks.BadNets` (Gu et al., 2017) first: exactly round(rate * N) images of
other classes get the trigger and the target label. Every epoch then logs the
clean test accuracy and the attack success rate (triggered test images of
other classes classified as the target). With --remove-suspects RUN the
poisoned run RUN's model reads this (identically poisoned) training set, a
detector of `defenses.poison_detection` (Tran et al., 2018; Chen et al., 2018)
flags suspects from its penultimate activations, and training runs without
them; suspects.json and the summary hold what was removed and, when the poison
is known, the detector's precision and recall.

Run folders: runs/classifier/<dataset>__<model>__<seed>__<time>/ with
metrics.csv (one row per epoch), learning_curve.png, checkpoints/last.pt
(written every epoch; --resume RUN_DIR continues it; with --keep-checkpoints also
checkpoints/epoch_N.pt, for bench/adv_training_curve.py) and summary.json
(test/accuracy, wall_seconds, train_cpu_seconds).
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

from attacks.poisoning import BadNets, Trigger, attack_success_rate
from defenses.poison_detection import DETECTORS
from rlab.config import check, opt
from rlab.vision.data import DATASET_NAMES, ImageData, course_subset, load_dataset
from rlab.errors import TrainingDiverged, UserError, diverged, first_nonfinite, load_state_checked
from rlab.vision.models import MODEL_NAMES, build_model, default_lr
from rlab.runs import RunDir, rng_state, write_json
from rlab.runtime import resolve_device, seed_everything, set_threads

ADV_METHODS = ("none", "pgd", "fast", "free")
POISONS = ("none", "badnets")
AUGMENTATIONS = ("auto", "none", "crop", "crop-flip")
DEFAULT_EPOCHS = 10
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    dataset: str = opt("mnist5k", help=f"dataset: {', '.join(DATASET_NAMES)}")
    model: str = opt("auto", help="model name (auto: mnist_cnn for 1 channel, fastnet for RGB)",
                     choices=["auto", *MODEL_NAMES])
    epochs: int | None = opt(None, help=f"passes over the training set (default {DEFAULT_EPOCHS}; with --resume: "
                                        f"extend the run to this many)")
    batch_size: int = opt(256, help="minibatch size")
    lr: float | None = opt(None, help="peak learning rate of the one-cycle schedule (default: the model's)")
    momentum: float = opt(0.9, help="Nesterov momentum")
    weight_decay: float = opt(5e-4, help="L2 weight decay")
    label_smoothing: float = opt(0.1, help="label smoothing of the cross-entropy loss")
    augment: str = opt("auto", help="augmentation (auto: crop-flip for RGB, crop for greyscale)", choices=list(AUGMENTATIONS))
    train_subset: int = opt(0, help="train on the first N shuffled training images only (0: all)")
    seed: int = opt(0, help="seed for Python, NumPy and torch")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")
    threads: int = opt(0, help="torch threads (0: every core up to 8)")
    data_dir: str | None = opt(None, help="folder holding the dataset files (cifar10, cifar10-jpg)")
    adv: str = opt("none", help="adversarial training method", choices=list(ADV_METHODS))
    eps: float = opt(0.0, help="L-inf radius of adversarial training, e.g. 8/255")
    adv_alpha: float | None = opt(None, help="adversarial step size (default: the method's)")
    adv_steps: int | None = opt(None, help="PGD steps of adversarial training (default: the method's)")
    adv_replays: int | None = opt(None, help="minibatch replays of free adversarial training (default: the method's)")
    adv_ramp: float = opt(0.0, help="fraction of training over which the adversarial eps ramps up from 0 "
                                    "(0: full eps from the start; 0.5 keeps MNIST at eps 0.3 from collapsing)")
    noise_sd: float = opt(0.0, help="train under Gaussian noise N(0, S^2) for randomized smoothing, e.g. 0.25 "
                                    "(0: none; excludes --adv)")
    optimizer: str = opt("sgd", help="optimizer (SGD with Nesterov momentum, or Adam)", choices=["sgd", "adam"])
    warmup: float = opt(0.25, help="fraction of the one-cycle schedule spent warming up to the peak lr")
    pretrained: bool = opt(False, help="start from pytorchcv's released weights (needs a network)")
    poison: str = opt("none", help="poison the training set (BadNets, Gu et al. 2017) before training",
                      choices=list(POISONS))
    poison_rate: float | None = opt(None, help="with --poison: share of the training set poisoned "
                                               f"(default {BadNets.rate})")
    target: int | None = opt(None, help=f"with --poison: the backdoor's target class index (default {BadNets.target})")
    trigger: str | None = opt(None, help="with --poison: trigger PATTERN[:SIZE[:CORNER]], pattern square|checker, "
                                         f"corner br|bl|tr|tl (default {Trigger().spec})")
    remove_suspects: str | None = opt(None, help="a poisoned classifier run folder: its model flags suspect "
                                                 "training samples (same training set), which this run leaves out")
    detector: str | None = opt(None, help=f"with --remove-suspects: poison detector (default {DETECTORS[0]})",
                               choices=list(DETECTORS))
    resume: str | None = opt(None, help="continue the run in this folder from its last checkpoint "
                                        "(with --epochs N: extend it to N epochs)")
    progress: bool = opt(True, help="show a progress bar")
    precision: str = opt("auto", help="arithmetic of forward and backward passes (auto: bf16 on CUDA, fp32 on CPU; "
                                      "bf16 on a CPU with AMX, e.g. Sapphire Rapids, is ~3x faster)",
                         choices=list(PRECISIONS))
    keep_checkpoints: bool = opt(False, help="also keep every epoch's checkpoint as checkpoints/epoch_N.pt "
                                             "(for accuracy-against-training-time curves)")

    def __post_init__(self) -> None:
        if self.epochs is None and not self.resume:
            self.epochs = DEFAULT_EPOCHS
        check(self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}")
        check(self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}")
        check(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.train_subset >= 0, f"--train-subset must be >= 0, got {self.train_subset}")
        check(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")
        check(0 <= self.adv_ramp <= 1, f"--adv-ramp must be in [0, 1], got {self.adv_ramp}")
        check(0 < self.warmup < 1, f"--warmup must be in (0, 1), got {self.warmup}")
        check_dataset_name(self.dataset)
        if self.poison == "none":
            given = [f"--{n.replace('_', '-')}" for n in ("poison_rate", "target", "trigger")
                     if getattr(self, n) is not None]
            check(not given, f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} a poisoning attack: "
                             "give it with --poison badnets, or leave it out")
        else:
            check(self.poison_rate is None or 0 < self.poison_rate < 1,
                  f"--poison-rate is the poisoned share of the training set, in (0, 1); got {self.poison_rate}")
            check(self.target is None or self.target >= 0, f"--target must be a class index >= 0, got {self.target}")
            if self.trigger is not None:
                try:
                    Trigger.parse(self.trigger)
                except ValueError as e:
                    raise UserError(f"--trigger: {e}") from None
        check(self.detector is None or self.remove_suspects is not None,
              "--detector chooses how --remove-suspects finds the poison: give it together with --remove-suspects RUN_DIR")
        if self.adv == "none":
            check(self.eps == 0, "--eps is the radius of adversarial training: give it together with --adv pgd|fast|free")
            tuned = [f"--{name.replace('_', '-')}" for name in ("adv_alpha", "adv_steps", "adv_replays", "adv_ramp")
                     if getattr(self, name)]
            check(not tuned, f"{', '.join(tuned)} tune adversarial training: give them together with --adv pgd|fast|free")
        else:
            check(0 < self.eps <= 1, f"--adv {self.adv} needs --eps in (0, 1] (images are in [0, 1]), got {self.eps}")
        check(0 <= self.noise_sd < math.inf, f"--noise-sd must be >= 0 (0: no noise), got {self.noise_sd}")
        check(not (self.noise_sd and self.adv != "none"),
              f"--noise-sd (Gaussian noise training) and --adv {self.adv} (adversarial training) exclude each other; "
              "give one of them")


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
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")
    threads: int = opt(0, help="torch threads (0: every core up to 8)")

    def __post_init__(self) -> None:
        check(self.per_class >= 0, f"--per-class must be >= 0, got {self.per_class}")
        check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        if self.dataset is not None:
            check_dataset_name(self.dataset)


def check_dataset_name(name: str) -> None:
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


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether passes run in bfloat16 autocast: --precision bf16, or auto on CUDA.

    bf16 runs channels-last (NHWC) tensors too: oneDNN's AMX kernels on CPU and the
    tensor cores on CUDA want them (fastnet's fast adversarial training step on one
    Sapphire Rapids core: 1.48 CPU s in fp32 NCHW, 0.87 fp32 NHWC, 0.52 bf16 NHWC).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def _autocast(device: torch.device, precision: str = "auto"):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


def _to_device(x: torch.Tensor, device: torch.device, precision: str = "auto") -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if uses_bf16(device, precision) else x


@torch.no_grad()
def predict_logits(model: nn.Module, data: ImageData, device: torch.device, batch_size: int = 500,
                   tta: bool = False, noise: torch.Generator | None = None, noise_sd: float = 0.0,
                   precision: str = "auto") -> torch.Tensor:
    """Logits (N, classes) of an eval-mode model; with tta, the mean over x and its mirror image;
    with noise_sd, of x + N(0, noise_sd^2) drawn from the generator `noise` (on `device`)."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        x = _to_device(data.float(slice(start, start + batch_size)), device, precision)
        if noise_sd:
            from defenses import gaussian_noise

            x = gaussian_noise(x, noise_sd, noise)
        with _autocast(device, precision):
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
    if rows and "test/noisy_accuracy" in rows[-1]:
        ax_acc.plot(epochs, [r.get("test/noisy_accuracy") for r in rows], "^--", label="test, under training noise")
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


# what --resume may change: the length of the run (to extend it) and how it runs, never what it learns
RESUME_OPTIONS = ("epochs", "device", "threads", "progress")


def _resumed_config(cfg: TrainConfig) -> tuple[TrainConfig, RunDir]:
    """The saved configuration of the run in cfg.resume, with the options --resume may change taken from cfg."""
    changed = [f.name for f in dataclasses.fields(TrainConfig)
               if f.name not in (*RESUME_OPTIONS, "resume") and getattr(cfg, f.name) != f.default]
    check(not changed, f"--resume continues a run with its saved options; --{changed[0].replace('_', '-') if changed else ''} "
                       f"would be ignored (allowed with --resume: --epochs to extend the run, --device, --threads, "
                       f"--progress)")
    run = RunDir.open(cfg.resume)
    saved = dict(run.config["options"])
    if run.config.get("kind") != "classifier" or "dataset" not in saved or "epochs" not in saved:
        raise UserError(f"{cfg.resume} is not a classifier run folder of `rlab classifier train`")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in saved.items() if k in known}
    if cfg.epochs is not None:  # --epochs N given: extend the run to N epochs
        check(cfg.epochs >= saved["epochs"], f"--epochs {cfg.epochs} would shorten the run; it was set to "
                                             f"{saved['epochs']} epochs (give more to extend it)")
        saved["epochs"] = cfg.epochs
    saved.update(resume=cfg.resume, progress=cfg.progress)
    if cfg.device != "auto":  # else the run's own device and threads (threads change the numbers)
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
    train_data, badnets, poisoned = training_set(cfg)
    num_planted = int(poisoned.sum()) if poisoned is not None else 0
    test_data = load_dataset(cfg.dataset, "test", cfg.data_dir)
    if (train_data.channels, train_data.image_size) != (test_data.channels, test_data.image_size):
        raise UserError(f"{cfg.dataset}: train and test images differ in shape")
    detection = None
    if cfg.remove_suspects:
        detection = find_suspects(cfg, train_data, poisoned, device)
        kept = torch.nonzero(~detection["suspects"]).flatten()
        train_data = train_data.subset(kept)
        poisoned = poisoned[kept] if poisoned is not None else None
    if badnets is not None:
        test_x, test_y = test_data.float().to(device), test_data.labels.to(device)
    model_name = cfg.model if cfg.model != "auto" else ("mnist_cnn" if train_data.channels == 1 else "fastnet")
    meta = {"model": model_name, "num_classes": len(train_data.classes), "in_channels": train_data.channels,
            "image_size": train_data.image_size, "classes": list(train_data.classes), "dataset": cfg.dataset}
    model = build_model(model_name, meta["num_classes"], meta["in_channels"], meta["image_size"],
                        pretrained=cfg.pretrained and not cfg.resume).to(device)
    if uses_bf16(device, cfg.precision):
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
    if cfg.noise_sd:
        from defenses import gaussian_noise

    start_epoch, step, train_seconds = 0, 0, 0.0
    if run is not None and run.config["options"].get("epochs") != cfg.epochs:  # extended: later resumes know it
        write_json(run.path / "config.json", {**run.config, "options": {**run.config["options"], "epochs": cfg.epochs}})
    if run is None:
        run = RunDir.create("classifier", f"{cfg.dataset.replace(':', '-')}__{model_name}", cfg.seed, cfg, device=device)
        if detection is not None:
            write_json(run.path / "suspects.json", {k: v for k, v in detection.items() if k != "suspects"})
    elif (run.path / "checkpoints" / "last.pt").exists():
        start_epoch, step, train_seconds = run.restore({"model": model, "optimizer": optimizer, "scheduler": scheduler},
                                                       ("epoch", "step", "train_seconds"), "rlab classifier train",
                                                       map_location=device)
    # (a run killed before its first checkpoint starts again from step 0 in the same folder)
    run.truncate_metrics(step)
    cpu_seconds = run.metrics[-1].get("time/train_cpu_seconds", 0.0) if run.metrics else 0.0

    from tqdm import tqdm

    wall_start = time.perf_counter()
    images, labels = train_data.images.to(device), train_data.labels.to(device)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        total_loss = total_correct = seen = 0.0
        order = torch.randperm(len(train_data)).to(device)
        batches = [b for b in order.split(cfg.batch_size) if len(b) >= 2]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None if cfg.progress else True)
        for idx in bar:
            x = _to_device(augment_batch(images[idx].float().div_(255), augment), device, cfg.precision)
            if cfg.noise_sd:
                x = gaussian_noise(x, cfg.noise_sd)
            y = labels[idx]
            if adv_trainer is not None:
                with _autocast(device, cfg.precision):
                    eps_now = max(ramped_eps(cfg.eps, step / total_steps, cfg.adv_ramp), 1e-3) if cfg.adv_ramp else None
                    loss, logits = adv_trainer.step(model, x, y, optimizer, loss_fn, eps=eps_now)
            else:
                with _autocast(device, cfg.precision):
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
        cpu_seconds += time.process_time() - c0
        bad = first_nonfinite(model.state_dict())
        if bad is not None:
            raise _diverged(step, epoch, f"weight {bad}", run, lr)
        test_acc, test_loss = accuracy_and_loss(predict_logits(model, test_data, device, precision=cfg.precision),
                                                test_data.labels)
        extra = {}
        if cfg.noise_sd:  # the same noise every epoch, from its own generator (the training RNG stays untouched)
            generator = torch.Generator(device=device).manual_seed(cfg.seed)
            noisy_logits = predict_logits(model, test_data, device, noise=generator, noise_sd=cfg.noise_sd,
                                          precision=cfg.precision)
            extra["test/noisy_accuracy"] = accuracy_and_loss(noisy_logits, test_data.labels)[0]
        if badnets is not None:
            with _autocast(device, cfg.precision):
                extra["backdoor/attack_success_rate"] = attack_success_rate(model, test_x, test_y, badnets.trigger,
                                                                            badnets.target)
        run.log(step, **{"epoch": epoch + 1, "train/loss": total_loss / seen, "train/accuracy": total_correct / seen,
                         "test/accuracy": test_acc, "test/loss": test_loss, **extra, "charts/lr": lr_used,
                         "time/train_seconds": train_seconds, "time/train_cpu_seconds": cpu_seconds}, flush=True)
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step,
                      "train_seconds": train_seconds, "cpu_seconds": cpu_seconds, "rng": rng_state(), "meta": meta}
        run.save_checkpoint(checkpoint)
        if cfg.keep_checkpoints:
            run.save_checkpoint({"model": checkpoint["model"], "epoch": epoch + 1, "step": step,
                                 "train_seconds": train_seconds, "cpu_seconds": cpu_seconds, "meta": meta},
                                epoch_checkpoint(epoch + 1))
        _plot_learning_curve(run.metrics, run.path / "learning_curve.png", f"{cfg.dataset} / {model_name}")
    last = run.metrics[-1] if run.metrics else {}
    run.write_summary({"test/accuracy": last.get("test/accuracy"), "test/loss": last.get("test/loss"),
                       "train/accuracy": last.get("train/accuracy"), "epochs": cfg.epochs,
                       **({"test/noisy_accuracy": last.get("test/noisy_accuracy"), "noise_sd": cfg.noise_sd}
                          if cfg.noise_sd else {}),
                       "train_seconds": train_seconds, "train_cpu_seconds": cpu_seconds,
                       "wall_seconds": time.perf_counter() - wall_start,
                       "model": model_name, "dataset": cfg.dataset, "num_train": len(train_data),
                       "num_test": len(test_data), "num_params": sum(p.numel() for p in model.parameters()),
                       **_poison_summary(badnets, num_planted, poisoned, detection, last)})
    return run.path


# ----------------------------------------------------------------------------- poisoning and its detection


def poisoning_attack(cfg: TrainConfig) -> BadNets | None:
    """The configured BadNets transform (None without --poison); unset options take BadNets' defaults."""
    if cfg.poison == "none":
        return None
    trigger = Trigger.parse(cfg.trigger) if cfg.trigger is not None else Trigger()
    return BadNets(target=BadNets.target if cfg.target is None else cfg.target,
                   rate=BadNets.rate if cfg.poison_rate is None else cfg.poison_rate, trigger=trigger, seed=cfg.seed)


def training_set(cfg: TrainConfig) -> tuple[ImageData, BadNets | None, torch.Tensor | None]:
    """The training set a run of `cfg` learns from (before --remove-suspects), right after
    seed_everything(cfg.seed): its --train-subset draw, poisoned when --poison is given;
    also the BadNets transform and the (N,) mask of poisoned images (None without --poison)."""
    data = load_dataset(cfg.dataset, "train", cfg.data_dir)
    if cfg.train_subset:
        data = data.subset(torch.randperm(len(data))[: cfg.train_subset])
    badnets = poisoning_attack(cfg)
    if badnets is None:
        return data, None, None
    data, poisoned = poison_training_set(data, badnets)
    return data, badnets, poisoned


def poison_training_set(data: ImageData, badnets: BadNets) -> tuple[ImageData, torch.Tensor]:
    """The poisoned copy of the training set and the (N,) bool mask of its poisoned images."""
    if badnets.target >= len(data.classes):
        raise UserError(f"--target {badnets.target} is not a class of {data.name}: give an index in 0..{len(data.classes) - 1}")
    try:
        out = badnets(data.images, data.labels)
    except ValueError as e:
        raise UserError(f"--poison badnets: {e}") from None
    return ImageData(out.images, out.labels, list(data.classes), data.name), out.poisoned


def _training_set_key(cfg: TrainConfig) -> tuple:
    """What fixes the (poisoned) training set: two runs with equal keys trained on the same images."""
    return cfg.dataset, cfg.train_subset, cfg.seed, poisoning_attack(cfg)


def find_suspects(cfg: TrainConfig, data: ImageData, poisoned: torch.Tensor | None, device: torch.device) -> dict:
    """Flag suspect training samples with the penultimate activations of --remove-suspects' model.

    Returns suspects (N,) bool, and for suspects.json / the summary: detector,
    source run, suspect indices, per-label statistics and, when the poison is
    known, precision and recall.
    """
    with torch.random.fork_rng(devices=[]):  # loading the source model draws initial weights: keep this run's RNG
        return _find_suspects(cfg, data, poisoned, device)


def _find_suspects(cfg: TrainConfig, data: ImageData, poisoned: torch.Tensor | None, device: torch.device) -> dict:
    from defenses.poison_detection import detect_poison

    if _training_set_key(saved_train_config(cfg.remove_suspects)) != _training_set_key(cfg):
        raise UserError(f"--remove-suspects {cfg.remove_suspects} was trained on another training set: give this run "
                        "the same --dataset, --train-subset, --seed and --poison options")
    model, _ = load_classifier(cfg.remove_suspects, device)
    features = training_features(model, data, device)
    detector = cfg.detector or DETECTORS[0]
    found = detect_poison(features, data.labels, detector)
    result = {"suspects": found.suspects, "detector": detector, "source_run": str(cfg.remove_suspects),
              "num_suspects": int(found.suspects.sum()), "suspect_index": torch.nonzero(found.suspects).flatten().tolist(),
              "per_class": found.per_class}
    if poisoned is not None:
        result["precision"], result["recall"] = found.precision_recall(poisoned)
    return result


def saved_train_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a classifier run folder was trained with (from its config.json)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in RunDir.open(run_dir).config["options"].items()
                              if k in known and k != "resume"})
    except (TypeError, UserError) as e:
        raise UserError(f"{run_dir} is not a run folder of `rlab classifier train` ({e})") from None


def training_features(model: nn.Module, data: ImageData, device: torch.device, chunk: int = 5000) -> torch.Tensor:
    """The model's penultimate activations (N, d) of every image of `data`, decoded `chunk` images at a time."""
    from defenses.poison_detection import penultimate_features

    return torch.cat([penultimate_features(model, data.float(slice(i, i + chunk)).to(device))
                      for i in range(0, len(data), chunk)])


def _poison_summary(badnets: BadNets | None, num_planted: int, poisoned: torch.Tensor | None,
                    detection: dict | None, last: dict) -> dict:
    out: dict = {}
    if badnets is not None:
        out.update({"backdoor/attack_success_rate": last.get("backdoor/attack_success_rate"),
                    "backdoor/poison_rate": badnets.rate, "backdoor/target": badnets.target,
                    "backdoor/trigger": badnets.trigger.spec, "backdoor/num_poisoned": num_planted,
                    "backdoor/num_poisoned_trained_on": int(poisoned.sum())})
    if detection is not None:
        out.update({f"detection/{k}": detection[k] for k in ("detector", "source_run", "num_suspects", "precision", "recall")
                    if k in detection})
    return out


def _diverged(step: int, epoch: int, what: str, run: RunDir, lr: float) -> TrainingDiverged:
    """A NaN/inf at `step`: the checkpoint of the last finished epoch is kept."""
    return diverged(f"step {step} (epoch {epoch + 1})", what, f"end of epoch {epoch}" if epoch > 0 else None,
                    run.path / "checkpoints" / "last.pt", lr)


# ----------------------------------------------------------------------------- load and evaluate


def epoch_checkpoint(epoch: int) -> str:
    """File name, under checkpoints/, of the model after `epoch` epochs (kept with --keep-checkpoints)."""
    return f"epoch_{epoch}.pt"


def kept_epochs(run_dir: str | Path) -> list[int]:
    """The epochs whose checkpoints a --keep-checkpoints run kept, ascending."""
    found = (RunDir.open(run_dir).path / "checkpoints").glob("epoch_*.pt")
    return sorted(int(p.stem.split("_")[1]) for p in found if p.stem.split("_")[1].isdigit())


def load_classifier(run_dir: str | Path, device: str | torch.device = "cpu",
                    epoch: int | None = None) -> tuple[nn.Module, dict]:
    """The trained model of a classifier run folder, in eval mode on `device`, and its options.

    The options are config.json's training options plus `model`, `num_classes`,
    `in_channels`, `image_size`, `classes` and `dataset` from the checkpoint. With
    `epoch`, the model after that epoch (a --keep-checkpoints run); else the last.
    """
    run = RunDir.open(run_dir)
    name = "last.pt"
    if epoch is not None:
        kept = kept_epochs(run_dir)
        if epoch not in kept:
            raise UserError(f"{run_dir} kept no checkpoint of epoch {epoch} "
                            f"({'kept: ' + ', '.join(map(str, kept)) if kept else 'train it with --keep-checkpoints'})")
        name = epoch_checkpoint(epoch)
    state = run.load_checkpoint(name, map_location="cpu")
    if not isinstance(state, dict) or "meta" not in state or "model" not in state:
        raise UserError(f"{run_dir} is not a classifier run folder (its checkpoint has no model metadata)")
    meta = state["meta"]
    try:
        model = build_model(meta["model"], meta["num_classes"], meta["in_channels"], meta["image_size"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{run_dir}: the checkpoint's model metadata is unreadable ({type(e).__name__}: {e})") from None
    load_state_checked(model, state, "model", run.path / "checkpoints" / name)
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
