"""MagNet's autoencoder reformer (defenses.generative): it learns the clean images, the
adaptive attacker breaks it, and `rlab bench attacks --defenses magnet` fits and caches it."""

import csv
import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks import PGD
from defenses import DenoisingAutoencoder, MagNetReformer, evaluate_defense
from rlab.cli import main


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from rlab.vision.data import load_dataset

    with pytest.MonkeyPatch.context() as patch:  # the session's decoded MNIST-5k, as the other tests use
        patch.setenv("RLAB_CACHE", str(tmp_path_factory.getbasetemp() / "rlab-cache"))
        train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    return train.float()[:1000], train.labels[:1000], test.float()[:150], test.labels[:150]


@pytest.fixture(scope="module")
def reformer(digits):
    x_train, *_ = digits
    defense = MagNetReformer(epochs=6)
    defense.losses = defense.fit(x_train)
    return defense


def test_the_autoencoder_learns_clean_digits(digits, reformer):
    _, _, x_test, _ = digits
    untrained = MagNetReformer().build(1).eval()
    with torch.no_grad():
        learned, before = F.mse_loss(reformer(x_test), x_test).item(), F.mse_loss(untrained(x_test), x_test).item()
    assert reformer.losses[-1] < reformer.losses[0]
    assert learned < 0.3 * before, (learned, before)
    assert reformer.gradient_rule == "exact" and reformer.adaptive() is reformer


def test_adaptive_attack_through_the_reformer_is_at_least_as_strong(digits, reformer):
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 14 * 14, 10))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(3):  # a classifier of clean digits, as MagNet's
        for batch in torch.randperm(len(x_train)).split(50):
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    attack = PGD(steps=10, rel_stepsize=0.25, random_start=False, seed=0)
    result = evaluate_defense(model, reformer, attack, x_test, y_test, eps=[0.2])
    assert result["clean"] > 0.85, result
    assert result["non_adaptive"][0] > 0.7, result  # the attack on the bare model mostly fails through the reformer
    assert result["adaptive"][0] <= result["non_adaptive"][0] - 0.3, result  # differentiating through it does not


def test_reformer_needs_fitting_and_round_trips_its_state(reformer):
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(RuntimeError, match="call fit"):
        MagNetReformer()(x)
    with pytest.raises(ValueError, match="fitted on 1-channel"):
        reformer(torch.rand(2, 3, 28, 28))
    copy = MagNetReformer().build(1)
    copy.load_state_dict(reformer.state_dict())
    with torch.no_grad():
        assert torch.equal(copy.eval()(x), reformer(x))
    assert DenoisingAutoencoder(3, pool=False)(torch.rand(1, 3, 9, 7)).shape == (1, 3, 9, 7)
    with pytest.raises(ValueError, match="epochs"):
        MagNetReformer(epochs=0)


def test_bench_attacks_fits_magnet_once_and_caches_it(runs_root, tmp_path, capsys, monkeypatch):
    import defenses.registry

    monkeypatch.setenv("RLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(defenses.registry.DEFENSES, "magnet", functools.partial(MagNetReformer, epochs=1, batch_size=256))
    assert main(["classifier", "train", "--dataset", "mnist5k", "--train-subset", "300", "--epochs", "1",
                 "--threads", "1", "--device", "cpu"]) == 0
    classifier = Path(capsys.readouterr().out.strip().splitlines()[-1])
    bench_args = ["bench", "attacks", "--classifier", str(classifier), "--attacks", "pgd", "--defenses", "none,magnet",
                  "--eps", "0,0.2", "--n", "20", "--steps", "3", "--gallery", "0", "--device", "cpu", "--threads", "1"]
    assert main(bench_args) == 0
    captured = capsys.readouterr()
    assert "magnet: fitted on mnist5k's 4000 training images" in captured.err
    (cached,) = (tmp_path / "cache" / "defenses").iterdir()
    bench = Path(captured.out.strip().splitlines()[-1])
    with open(bench / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["defense"] == "magnet"]
    assert sorted((r["adaptive"], r["eps"]) for r in rows) == [("False", "0.0"), ("False", "0.2"),
                                                              ("True", "0.0"), ("True", "0.2")]
    assert "| pgd | magnet | adaptive |" in (bench / "report.md").read_text()
    assert main(bench_args) == 0
    assert f"magnet: fitted state loaded from {cached}" in capsys.readouterr().err
    summary = json.loads((bench / "summary.json").read_text())
    assert "robust_accuracy/pgd/magnet/adaptive/0.2" in summary
