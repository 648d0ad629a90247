"""`rlab classifier train|eval` end to end on small slices of MNIST-5k."""

import json
from pathlib import Path

import pytest
import torch

import rlab.vision.classifier as classifier
from rlab.vision.classifier import TrainConfig, load_classifier, one_cycle, random_crop, steps_per_epoch
from rlab.cli import main
from rlab.config import make_config
from rlab.vision.data import course_subset, load_dataset
from rlab.errors import UserError

SMALL = ["--dataset", "mnist5k", "--train-subset", "400", "--batch-size", "100", "--threads", "1"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RLAB_CACHE", str(tmp_path_factory.getbasetemp() / "rlab-cache"))


def train_cli(capsys, *args) -> Path:
    assert main(["classifier", "train", *SMALL, *args]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_train_then_eval_end_to_end(runs_root, capsys):
    run = train_cli(capsys, "--epochs", "2", "--train-subset", "1000", "--batch-size", "50")
    assert run.parent == runs_root / "classifier" and run.name.startswith("mnist5k__mnist_cnn__0__")
    for name in ["config.json", "metrics.csv", "summary.json", "learning_curve.png", "checkpoints/last.pt"]:
        assert (run / name).is_file(), name
    s = summary(run)
    assert s["test/accuracy"] > 0.75 and s["num_train"] == 1000 and s["num_test"] == 1000 and s["wall_seconds"] > 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "test/accuracy" in rows[0] and "train/loss" in rows[0]
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"

    model, options = load_classifier(run)
    assert not model.training and options["classes"] == [str(d) for d in range(10)] and options["epochs"] == 2
    test = load_dataset("mnist5k", "test")
    with torch.no_grad():
        acc = (model(test.float()).argmax(1) == test.labels).float().mean().item()
    assert acc == pytest.approx(s["test/accuracy"], abs=1e-6)

    assert main(["classifier", "eval", str(run), "--per-class", "20", "--threads", "1"]) == 0
    ev = Path(capsys.readouterr().out.strip().splitlines()[-1])
    e = summary(ev)
    sub = course_subset(test, 20)
    with torch.no_grad():
        sub_acc = (model(sub.float()).argmax(1) == sub.labels).float().mean().item()
    assert e["num_images"] == 200 and e["test/accuracy"] == pytest.approx(sub_acc, abs=1e-6)
    assert set(e["per_class/accuracy"]) == set(options["classes"])


def test_resume_continues_to_the_same_result(runs_root, capsys, monkeypatch):
    straight = train_cli(capsys, "--epochs", "2")
    calls = []
    real_plot = classifier._plot_learning_curve

    def stop_after_first_epoch(*args):
        real_plot(*args)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(classifier, "_plot_learning_curve", stop_after_first_epoch)
    assert main(["classifier", "train", *SMALL, "--epochs", "2"]) == 130
    capsys.readouterr()
    interrupted = next(p for p in (runs_root / "classifier").iterdir() if p != straight)
    assert not (interrupted / "summary.json").exists()
    assert main(["classifier", "train", "--resume", str(interrupted)]) == 0
    assert Path(capsys.readouterr().out.strip()) == interrupted
    a, b = load_classifier(straight)[0].state_dict(), load_classifier(interrupted)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary(interrupted)["test/accuracy"] == summary(straight)["test/accuracy"]
    assert len((interrupted / "metrics.csv").read_text().splitlines()) == 3


def test_adversarial_training_goes_through_defenses(runs_root, capsys, monkeypatch):
    import defenses

    calls = []
    real_step = defenses.AdversarialTraining.step

    def spy(self, model, x, y, optimizer, loss_fn=None, eps=None):
        calls.append((self.method, self.eps if eps is None else eps))
        return real_step(self, model, x, y, optimizer, loss_fn, eps=eps)

    monkeypatch.setattr(defenses.AdversarialTraining, "step", spy)
    run = train_cli(capsys, "--epochs", "1", "--adv", "fast", "--eps", "0.1")
    assert calls == [("fast", 0.1)] * 4
    assert json.loads((run / "config.json").read_text())["options"]["adv"] == "fast"
    assert summary(run)["test/accuracy"] is not None

    calls.clear()  # eps ramps linearly over the first half of the 4 updates, from (almost) 0
    train_cli(capsys, "--epochs", "1", "--adv", "pgd", "--eps", "0.1", "--adv-steps", "2", "--adv-ramp", "0.5",
              "--optimizer", "adam")
    assert [m for m, _ in calls] == ["pgd"] * 4
    assert [e for _, e in calls] == pytest.approx([1e-3, 0.05, 0.1, 0.1])


def test_kept_checkpoints_are_the_models_after_each_epoch(runs_root, capsys):
    run = train_cli(capsys, "--epochs", "2", "--keep-checkpoints", "--precision", "bf16")
    assert classifier.kept_epochs(run) == [1, 2]
    first, second = load_classifier(run, epoch=1)[0], load_classifier(run, epoch=2)[0]
    last = load_classifier(run)[0].state_dict()
    assert all(torch.equal(second.state_dict()[k], last[k]) for k in last)
    assert not all(torch.equal(first.state_dict()[k], last[k]) for k in last)
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()]
    logged = [dict(zip(rows[0], r)) for r in rows[1:]]
    test = load_dataset("mnist5k", "test")
    for epoch, model in ((1, first), (2, second)):  # each file is the model that epoch's row was measured on
        logits = classifier.predict_logits(model, test, torch.device("cpu"), precision="bf16")
        assert (logits.argmax(1) == test.labels).float().mean().item() == pytest.approx(
            float(logged[epoch - 1]["test/accuracy"]), abs=1e-6)
    cpu = [float(r["time/train_cpu_seconds"]) for r in logged]
    assert 0 < cpu[0] < cpu[1] and summary(run)["train_cpu_seconds"] == pytest.approx(cpu[1])
    with pytest.raises(UserError, match="kept no checkpoint of epoch 3 \\(kept: 1, 2\\)"):
        load_classifier(run, epoch=3)
    plain = train_cli(capsys, "--epochs", "1")
    with pytest.raises(UserError, match="train it with --keep-checkpoints"):
        load_classifier(plain, epoch=1)


def test_bf16_precision_is_asked_for_on_cpu_and_the_default_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [classifier.uses_bf16(cpu, p) for p in ("auto", "fp32", "bf16")] == [False, False, True]
    assert [classifier.uses_bf16(cuda, p) for p in ("auto", "fp32", "bf16")] == [True, False, True]
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        classifier.uses_bf16(cpu, "fp16")


@pytest.mark.parametrize("args, message", [
    (["--adv", "pgd"], "--eps"),
    (["--eps", "0.1"], "together with --adv"),
    (["--model", "resnet20_cifar10", "--epochs", "1"], "32x32"),
    (["--dataset", "mnist"], "Did you mean 'mnist5k'"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--adv", "pgd", "--eps", "0.3", "--adv-ramp", "2"], "--adv-ramp must be in [0, 1]"),
    (["--optimizer", "rmsprop"], "not allowed"),
    (["--model", "resnet"], "not allowed"),
    (["--precision", "fp16"], "not allowed"),
])
def test_user_errors_are_one_line_exit_2(runs_root, capsys, args, message):
    assert main(["classifier", "train", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_eval_rejects_a_dataset_of_the_wrong_shape(runs_root, capsys, tmp_path):
    import numpy as np
    from PIL import Image

    run = train_cli(capsys, "--epochs", "1")
    for cls in "ab":
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "imgs" / cls / "0.png")
    assert main(["classifier", "eval", str(run), "--dataset", f"imagefolder:{tmp_path / 'imgs'}"]) == 2
    assert "takes 1x28x28" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a run folder"):
        load_classifier(tmp_path)


def test_random_crop_shifts_within_padding_and_steps_per_epoch():
    torch.manual_seed(0)
    x = torch.arange(36.0).view(1, 1, 6, 6).repeat(50, 1, 1, 1)
    out = random_crop(x, pad=1)
    assert out.shape == x.shape
    assert any(torch.equal(out[i], x[0]) for i in range(50)) and not all(torch.equal(out[i], x[0]) for i in range(50))
    # interior pixels move by at most one row/column
    assert ((out[:, 0, 2:4, 2:4] - x[:, 0, 2:4, 2:4]).abs() <= 7).all()
    assert steps_per_epoch(401, 100) == 4 and steps_per_epoch(402, 100) == 5 and steps_per_epoch(50, 100) == 1
    assert make_config(TrainConfig, adv="pgd", eps=8 / 255).eps == pytest.approx(0.0314, abs=1e-4)


def test_one_cycle_by_hand():
    # T = 8 steps, w = 2 warm-up steps: 1/2, 1, then (8 - t) / 6 for t = 2..7
    assert [one_cycle(t, 8) for t in range(8)] == pytest.approx([0.5, 1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert [one_cycle(t, 1) for t in range(1)] == [1.0]
