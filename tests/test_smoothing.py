"""Randomized smoothing (defenses.smoothing) against closed forms, and `rlab bench certify` end to end.

For a binary linear classifier f(x) = [w.x + b > 0] the smoothed classifier has a
closed form: w.(x + delta) + b ~ N(w.x + b, sigma^2 ||w||^2), so
g(x) = [w.x + b > 0], p_A = Phi(|w.x + b| / (sigma ||w||)) and the radius of
Theorem 1 is sigma Phi^-1(p_A) = |w.x + b| / ||w||: the distance to the boundary.
"""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import binom, binomtest, norm

from defenses import ABSTAIN, SmoothedClassifier, binomial_test_two_sided, clopper_pearson_lower
from rlab.cli import main

D = 16
W = torch.full((D,), 0.25)  # ||w|| = 1: the margin w.x + b is the L2 distance to the boundary
B = -0.5 * float(W.sum())   # the boundary passes through the centre of the box


class Linear(nn.Module):
    """Binary linear classifier: logits (-s, s) with s = w.x + b, so the arg-max is [s > 0]."""

    def forward(self, x):
        s = x.flatten(1) @ W + B
        return torch.stack([-s, s], 1)


def points(margins):
    """Images 0.5 + t w: margin (signed distance to the boundary) t, label [t > 0]."""
    t = torch.tensor(margins, dtype=torch.float32)
    return 0.5 + t[:, None] * W, (t > 0).long()


def test_certified_radius_matches_the_linear_closed_form():
    sigma, n, alpha = 0.5, 20_000, 0.001
    margins = [0.05, -0.2, 0.5, -0.8, 1.2, 0.35, -0.65, 0.9]
    x, y = points(margins)
    cert = SmoothedClassifier(Linear(), sigma, batch_size=50_000, seed=1).certify(x, n0=100, n=n, alpha=alpha)
    true_radius = torch.tensor(margins).abs()
    p_a = norm.cdf(true_radius.numpy() / sigma)
    certified = cert.prediction != ABSTAIN
    assert certified[2:].all(), "margins >= 0.2 at sigma 0.5 are far enough from 1/2 to certify with n = 20,000"
    assert (cert.prediction[certified] == y[certified]).all()
    # never above the closed form; below it only by the confidence margin (~3.1 standard errors at alpha 0.001)
    assert (cert.radius <= true_radius).all(), (cert.radius, true_radius)
    slack = 8 * np.sqrt(p_a * (1 - p_a) / n)
    floor = sigma * norm.ppf(np.clip(p_a - slack, 0.5, 1))
    assert (cert.radius[certified].numpy() >= floor[certified.numpy()] - 1e-6).all(), (cert.radius, floor)
    assert cert.p_a_lower.numpy() == pytest.approx(np.minimum(p_a, cert.p_a_lower.numpy()))
    # n bounds the radius: with every sample agreeing, sigma Phi^-1(alpha^(1/n)) is the most it can certify
    assert cert.radius.max() <= sigma * norm.ppf(alpha ** (1 / n)) + 1e-5


def test_on_the_boundary_it_abstains_and_the_radius_is_zero():
    x, _ = points([0.0, 0.0, 0.0])
    cert = SmoothedClassifier(Linear(), 0.25, seed=0).certify(x, n0=50, n=5_000, alpha=0.001)
    assert (cert.prediction == ABSTAIN).all() and (cert.radius == 0).all() and (cert.p_a_lower < 0.5).all()
    assert (SmoothedClassifier(Linear(), 0.25, seed=0).predict(x, 5_000, 0.001) == ABSTAIN).all()


def test_clopper_pearson_lower_bound_solves_its_defining_equation():
    n, alpha = 200, 0.01
    k = np.array([1, 7, 100, 150, 199, 200])
    lower = clopper_pearson_lower(k, n, alpha)
    # the lower end p_L of the one-sided interval: P(Bin(n, p_L) >= k) = alpha
    assert binom.sf(k - 1, n, lower) == pytest.approx(np.full(len(k), alpha), rel=1e-6)
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n))


def test_binomial_test_is_scipys_two_sided_test():
    for n_a, n_b in [(11, 0), (10, 0), (30, 12), (25, 25), (7, 6), (500, 430)]:
        assert binomial_test_two_sided(n_a, n_b) == pytest.approx(binomtest(n_a, n_a + n_b, 0.5).pvalue)


class Constant(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_predict_abstains_until_the_vote_is_significant():
    x = torch.rand(3, 1, 4, 4)
    unanimous = SmoothedClassifier(Constant([0.0, 2.0, 1.0]), 0.5)
    # 10 votes to 0: p = 2 / 2^10 = 0.00195 > 0.001, abstain; 11 to 0: p = 0.00098 <= 0.001, answer
    assert (unanimous.predict(x, 10, 0.001) == ABSTAIN).all()
    assert (unanimous.predict(x, 11, 0.001) == 1).all()
    assert (unanimous.predict(x, 10, 0.002) == 1).all()


def test_predict_answers_the_linear_closed_form_and_draws_are_seeded():
    x, y = points([0.6, -0.5, 0.02, 0.0])
    g = SmoothedClassifier(Linear(), 0.25, seed=3)
    prediction = g.predict(x, 2_000, 0.001)
    assert prediction[:2].tolist() == y[:2].tolist()
    assert prediction[3] == ABSTAIN  # p_A = 1/2 exactly: the test must not reject
    a = SmoothedClassifier(Linear(), 0.25, seed=3).sample_counts(x, 500)
    b = SmoothedClassifier(Linear(), 0.25, seed=3).sample_counts(x, 500)
    c = SmoothedClassifier(Linear(), 0.25, seed=4).sample_counts(x, 500)
    assert torch.equal(a, b) and not torch.equal(a, c) and (a.sum(1) == 500).all()


def test_packed_batches_count_every_sample_of_every_image():
    x, _ = points([0.3, -0.3, 0.0, 0.1, -0.1])
    for batch_size in (7, 1000):
        counts = SmoothedClassifier(Linear(), 0.25, batch_size=batch_size, seed=0).sample_counts(x, 33)
        assert counts.shape == (5, 2) and (counts.sum(1) == 33).all()
    assert SmoothedClassifier(Linear(), 1e-6, batch_size=7).sample_counts(x[:2], 33).tolist() == [[0, 33], [33, 0]]


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0}, "sigma must be a positive number"),
    ({"sigma": 0.25, "batch_size": 0}, "batch_size must be a positive integer"),
    ({"sigma": 0.25, "seed": -1}, "seed must be a non-negative integer"),
])
def test_bad_construction_says_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SmoothedClassifier(Linear(), **kwargs)


def test_bad_certify_arguments_say_what_is_allowed():
    g, (x, _) = SmoothedClassifier(Linear(), 0.25), points([0.3])
    with pytest.raises(ValueError, match=r"alpha must be a probability in \(0, 1\)"):
        g.certify(x, 10, 100, 1.5)
    with pytest.raises(ValueError, match="n0 must be a positive integer"):
        g.certify(x, 0, 100, 0.01)


def test_the_attack_through_the_smoothed_classifier_reaches_the_boundary_and_no_further():
    from rlab.vision.certify_bench import CertifyConfig, attack_smoothed

    x, y = points([0.3, -0.35, 0.4, -0.3])  # distances to the boundary 0.3 .. 0.4
    cfg = CertifyConfig(run_dir="unused", n=2_000, attack_eps=[0.15, 0.8], attack_steps=10, eot_samples=8)
    rows = attack_smoothed(SmoothedClassifier(Linear(), 0.25, seed=0), x, y, cfg)
    accuracy = {r["radius"]: r["accuracy"] for r in rows}
    assert accuracy == {0.0: 1.0, 0.15: 1.0, 0.8: 0.0}, accuracy


def test_soft_smoothed_classifier_is_a_differentiable_log_probability():
    x, y = points([0.3, -0.3])
    soft = SmoothedClassifier(Linear(), 0.25, seed=0).soft(samples=64)
    x = x.clone().requires_grad_(True)
    out = soft(x)
    assert out.shape == (2, 2) and torch.allclose(out.exp().sum(1), torch.ones(2))
    grad, = torch.autograd.grad(nn.functional.cross_entropy(out, y), x)
    # the loss rises towards the boundary: along -w for class 1, +w for class 0
    assert (grad[0] @ W) < 0 < (grad[1] @ W)


# ----------------------------------------------------------------------------- CLI end to end

SMALL = ["--dataset", "mnist5k", "--model", "mnist_small", "--train-subset", "400", "--batch-size", "100",
         "--epochs", "1", "--threads", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RLAB_CACHE", str(tmp_path_factory.getbasetemp() / "rlab-cache"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A noise-trained and a plainly trained tiny classifier."""
    import rlab.runs

    root = tmp_path_factory.mktemp("runs")
    with rlab.runs.use_runs_root(root):
        assert main(["classifier", "train", *SMALL, "--noise-sd", "0.5"]) == 0
        assert main(["classifier", "train", *SMALL, "--seed", "1"]) == 0
    noisy, plain = sorted((root / "classifier").iterdir(), key=lambda p: json.loads((p / "config.json").read_text())["seed"])
    return noisy, plain


def test_noise_training_draws_from_defenses_with_its_sd(runs_root, capsys, monkeypatch):
    import defenses

    sigmas = []
    real = defenses.gaussian_noise

    def spy(x, sigma, generator=None):
        sigmas.append((sigma, generator is None))
        return real(x, sigma, generator)

    monkeypatch.setattr(defenses, "gaussian_noise", spy)
    assert main(["classifier", "train", *SMALL, "--noise-sd", "0.3"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    # 4 training minibatches from the global RNG, then 2 test batches from the eval generator
    assert sigmas == [(0.3, True)] * 4 + [(0.3, False)] * 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["noise_sd"] == 0.3 and 0 <= summary["test/noisy_accuracy"] <= 1


def test_certify_end_to_end(runs, runs_root, capsys):
    noisy, _ = runs
    assert main(["bench", "certify", str(noisy), "--n", "60", "--n0", "10", "--images", "20", "--attack-images", "5",
                 "--attack-steps", "2", "--eot-samples", "2", "--attack-eps", "0.5,1", "--alpha", "0.01",
                 "--threads", "1", "--device", "cpu"]) == 0
    (bench,) = (runs_root / "bench").iterdir()
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(bench) and bench.name.startswith("certify__mnist5k")
    for name in ("certificates.csv", "results.csv", "certified.png", "report.md", "summary.json"):
        assert (bench / name).is_file(), name
    with open(bench / "certificates.csv", newline="") as f:
        certs = list(csv.DictReader(f))
    with open(bench / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(certs) == 20 and len({c["index"] for c in certs}) == 20
    radius = np.array([float(c["radius"]) for c in certs])
    correct = np.array([c["correct"] == "True" for c in certs])
    assert all((c["prediction"] == "-1") == (float(c["radius"]) == 0 and float(c["p_a_lower"]) < 0.5) for c in certs)
    certified = [r for r in rows if r["kind"] == "certified"]
    assert [float(r["radius"]) for r in certified][:3] == [0.0, 0.125, 0.25]
    for r in certified:  # the table is the per-image certificates counted at each radius
        assert float(r["accuracy"]) == pytest.approx((correct & (radius >= float(r["radius"]))).mean(), abs=1e-4)
    empirical = [r for r in rows if r["kind"] == "empirical"]
    assert [float(r["radius"]) for r in empirical] == [0.0, 0.5, 1.0] and all(r["images"] == "5" for r in empirical)
    summary = json.loads((bench / "summary.json").read_text())
    assert summary["sigma"] == 0.5 and summary["n"] == 60 and summary["seconds_per_image_per_1000_samples"] > 0
    assert summary["largest_certifiable_radius"] == pytest.approx(0.5 * norm.ppf(0.01 ** (1 / 60)))
    assert radius.max() <= summary["largest_certifiable_radius"] + 1e-5
    assert summary["at_largest_radius"] == pytest.approx((radius >= summary["largest_certifiable_radius"] - 1e-4).mean())
    assert "| certified (%) |" in (bench / "report.md").read_text()


def test_certify_without_attack_tabulates_only_certified_radii(runs, runs_root, capsys):
    assert main(["bench", "certify", str(runs[1]), "--sigma", "0.25", "--n", "30", "--n0", "5", "--images", "6",
                 "--attack-images", "0", "--threads", "1", "--device", "cpu"]) == 0
    (bench,) = (runs_root / "bench").iterdir()
    with open(bench / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((bench / "summary.json").read_text())
    assert {r["kind"] for r in rows} == {"certified"} and summary["attack_images"] == 0
    assert summary["sigma"] == 0.25 and summary["trained_noise_sd"] == 0.0
    r_max = summary["largest_certifiable_radius"]
    assert [float(r["radius"]) for r in rows] == [0.125 * k for k in range(int(r_max / 0.125) + 1)]


@pytest.mark.parametrize("args, message", [
    (["--sigma", "0"], "--sigma must be > 0"),
    (["--alpha", "1.5"], "--alpha must be a probability in (0, 1)"),
    (["--n", "0"], "--n must be >= 1"),
    (["--attack-eps", "0.5,-1"], "--attack-eps values must be L2 radii > 0"),
    (["--attack-eps", "40"], "exceeds the L2 diameter of the image box"),
    (["--images", "-3"], "--images must be >= 0"),
])
def test_certify_bad_input_is_one_line_exit_2(runs, runs_root, capsys, args, message):
    assert main(["bench", "certify", str(runs[0]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (runs_root / "bench").exists(), "a refused command must not leave a run folder"


def test_certify_needs_a_sigma_for_a_classifier_trained_without_noise(runs, runs_root, capsys, tmp_path):
    assert main(["bench", "certify", str(runs[1])]) == 2
    assert "was trained without --noise-sd; give the smoothing noise with --sigma" in capsys.readouterr().err
    assert main(["bench", "certify", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert not (runs_root / "bench").exists()


@pytest.mark.parametrize("args, message", [
    (["--noise-sd", "0.25", "--adv", "fast", "--eps", "0.1"], "--noise-sd (Gaussian noise training) and --adv fast"),
    (["--noise-sd", "-1"], "--noise-sd must be >= 0"),
    (["--noise-sd", "0.25", "--adv-steps", "3"], "--adv-steps tune adversarial training: give them together with --adv"),
])
def test_noise_training_bad_input_is_one_line_exit_2(runs_root, capsys, args, message):
    assert main(["classifier", "train", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not runs_root.exists() or not any(runs_root.rglob("config.json"))


def test_noise_is_not_clipped_and_has_the_asked_sd():
    from defenses import gaussian_noise

    x = torch.zeros(200, 1, 28, 28)
    noisy = gaussian_noise(x, 0.5, torch.Generator().manual_seed(0))
    assert noisy.min() < 0 and noisy.std().item() == pytest.approx(0.5, rel=0.01)
    assert math.isclose(noisy.mean().item(), 0.0, abs_tol=0.01)
