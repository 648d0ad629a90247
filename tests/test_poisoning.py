"""Backdoor poisoning (attacks.poisoning), its detection (defenses.poison_detection), and
`rlab classifier train --poison` / `rlab bench backdoor` on tiny budgets."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from attacks.poisoning import BadNets, Trigger, attack_success_rate
from defenses.poison_detection import (activation_clustering, detect_poison, penultimate_features, silhouette_score,
                                       spectral_scores, spectral_signatures, top_direction_projection, two_means,
                                       two_means_separation)
from rlab.cli import main


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RLAB_CACHE", str(tmp_path_factory.getbasetemp() / "rlab-cache"))


def labelled_images(n=200, classes=10, dtype=torch.uint8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    return (x if dtype == torch.uint8 else x.float() / 255), torch.arange(n) % classes


# ----------------------------------------------------------------------------- the transform


@pytest.mark.parametrize("n, rate", [(200, 0.05), (200, 0.013), (1000, 0.1), (37, 0.5)])
def test_badnets_poisons_exactly_the_share_and_leaves_the_rest(n, rate):
    x, y = labelled_images(n)
    x0, y0 = x.clone(), y.clone()
    out = BadNets(target=3, rate=rate, seed=1)(x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0), "the inputs must not change in place"
    assert int(out.poisoned.sum()) == round(rate * n) == len(out.index)
    assert (y0[out.poisoned] != 3).all(), "only images of other classes are poisoned"
    assert (out.labels[out.poisoned] == 3).all()
    assert torch.equal(out.labels[~out.poisoned], y0[~out.poisoned])
    assert torch.equal(out.images[~out.poisoned], x0[~out.poisoned])
    assert torch.equal(out.images[out.poisoned], Trigger().stamp(x0[out.poisoned]))
    again = BadNets(target=3, rate=rate, seed=1)(x, y)
    other = BadNets(target=3, rate=rate, seed=2)(x, y)
    assert torch.equal(again.poisoned, out.poisoned) and not torch.equal(other.poisoned, out.poisoned)


@pytest.mark.parametrize("pattern", ["square", "checker"])
@pytest.mark.parametrize("corner", ["br", "bl", "tr", "tl"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_trigger_is_stamped_in_its_corner_and_in_bounds(pattern, corner, dtype):
    x, _ = labelled_images(4, dtype=dtype)
    trigger = Trigger(pattern, 3, corner, margin=1)
    stamped = trigger.stamp(x)
    white = 255 if dtype == torch.uint8 else 1.0
    assert stamped.dtype == dtype and stamped.shape == x.shape
    assert stamped.min() >= 0 and stamped.max() <= white
    changed_rows = slice(1, 4) if corner[0] == "t" else slice(8, 11)
    changed_cols = slice(1, 4) if corner[1] == "l" else slice(8, 11)
    inside = torch.zeros(12, 12, dtype=torch.bool)
    inside[changed_rows, changed_cols] = True
    assert torch.equal(stamped[..., ~inside], x[..., ~inside]), "pixels outside the trigger must not change"
    patch = stamped[..., changed_rows, changed_cols]
    expected = torch.ones(3, 3) if pattern == "square" else torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    assert torch.equal(patch, (expected * white).to(dtype).expand_as(patch))


def test_trigger_specs_and_bad_arguments():
    assert Trigger.parse("square:5:tl") == Trigger("square", 5, "tl")
    assert Trigger.parse("checker") == Trigger() and Trigger.parse(Trigger("square", 2, "bl").spec) == Trigger("square", 2, "bl")
    for spec, message in [("dots:3", "pattern"), ("square:x", "size"), ("square:3:middle", "corner"), ("", "PATTERN"),
                          ("square:0", "size"), ("a:1:br:extra", "PATTERN")]:
        with pytest.raises(ValueError, match=message):
            Trigger.parse(spec)
    with pytest.raises(ValueError, match="does not fit"):
        Trigger(size=12).stamp(torch.zeros(1, 1, 12, 12))
    x, y = labelled_images(20, classes=2)
    with pytest.raises(ValueError, match="poisons none"):
        BadNets(rate=0.01)(x, y)
    with pytest.raises(ValueError, match="only 10 are not of target"):
        BadNets(rate=0.9)(x, y)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        BadNets(rate=1.5)


class TriggerDetector(nn.Module):
    """Answers `target` when the bottom-right 2x2 corner is white, else class 1."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x):
        lit = x[:, 0, -3:-1, -3:-1].flatten(1).min(1).values > 0.99
        logits = torch.zeros(len(x), 10)
        logits[torch.arange(len(x)), torch.where(lit, self.target, 1)] = 1.0
        return logits


def test_attack_success_rate_counts_triggered_images_of_other_classes():
    x, y = labelled_images(100, dtype=torch.float32)
    x = x * 0.5  # no white corner by chance
    model = TriggerDetector(target=4)
    assert attack_success_rate(model, x, y, Trigger("square", 2), target=4) == 1.0
    assert attack_success_rate(model, x, y, Trigger("square", 2, "tl"), target=4) == 0.0
    assert attack_success_rate(nn.Sequential(TriggerDetector(4), nn.Softmin(1)), x, y, Trigger("square", 2), 4) == 0.0


# ----------------------------------------------------------------------------- detection


def planted(poison=60, d=32, seed=0, shift=12.0):
    """Per label 300 Gaussian representations; label 0 also holds `poison` ones shifted by `shift` sigmas."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(10, d, generator=g)
    labels = torch.arange(10).repeat_interleave(300)
    features = centres[labels] + torch.randn(len(labels), d, generator=g)
    bad = centres[0] + shift * torch.nn.functional.normalize(torch.randn(1, d, generator=g)) + torch.randn(poison, d, generator=g)
    features = torch.cat([features, bad])
    labels = torch.cat([labels, torch.zeros(poison, dtype=torch.long)])
    poisoned = torch.cat([torch.zeros(3000, dtype=torch.bool), torch.ones(poison, dtype=torch.bool)])
    return features.clamp_min(0), labels, poisoned  # clamp: representations after a ReLU


@pytest.mark.parametrize("method, min_precision", [("spectral", 0.6), ("clustering", 0.95)])
def test_detectors_find_planted_poison_and_leave_clean_labels_alone(method, min_precision):
    features, labels, poisoned = planted()
    found = detect_poison(features, labels, method)
    precision, recall = found.precision_recall(poisoned)
    assert recall == 1.0 and precision >= min_precision, (precision, recall)
    assert [c for c, s in found.per_class.items() if s["flagged"]] == [0]
    clean = detect_poison(features[~poisoned], labels[~poisoned], method)
    assert not clean.suspects.any(), "no label of a clean set may be flagged"


def test_spectral_score_is_the_squared_projection_on_the_top_singular_vector():
    features, labels, _ = planted()
    r = features[labels == 0].double()
    centred = r - r.mean(0)
    v = torch.linalg.eigh(centred.T @ centred).eigenvectors[:, -1]  # top eigenvector of the covariance
    assert torch.allclose(spectral_scores(features[labels == 0]).double(), (centred @ v) ** 2, rtol=1e-4, atol=1e-6)
    assert torch.allclose(top_direction_projection(features[labels == 0]).abs(), (centred @ v).abs(), atol=1e-6)


def test_two_means_and_silhouette_against_brute_force():
    g = torch.Generator().manual_seed(3)
    z = torch.cat([torch.randn(30, 3, generator=g), torch.randn(12, 3, generator=g) + torch.tensor([9.0, 0, 0])])
    assign = two_means(z)
    assert torch.equal(assign[:30], assign[:1].expand(30)) and torch.equal(assign[30:], 1 - assign[:1].expand(12))
    s = []
    for i in range(len(z)):
        d = [float((z[i] - z[j]).norm()) for j in range(len(z))]
        own = [d[j] for j in range(len(z)) if assign[j] == assign[i] and j != i]
        other = [d[j] for j in range(len(z)) if assign[j] != assign[i]]
        a, b = sum(own) / len(own), sum(other) / len(other)
        s.append((b - a) / max(a, b))
    assert silhouette_score(z, assign, chunk=7) == pytest.approx(sum(s) / len(s), rel=1e-6)
    one_gaussian = torch.randn(20000, 1, generator=g)
    assert two_means_separation(one_gaussian, two_means(one_gaussian)) == pytest.approx(1.32, abs=0.03)


def test_two_means_keeps_the_least_inertia_start_where_the_first_component_misleads():
    # the clean images spread widely along x (the top component); the poison is a small tight cluster far off in y:
    # Lloyd from the first component's sign settles on x < 0 / x > 0, the least-inertia split isolates the poison
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(5000, 2, generator=g) * torch.tensor([5.0, 1.0])
    poison = torch.randn(500, 2, generator=g) * 0.5 + torch.tensor([0.0, -15.0])
    z = torch.cat([clean, poison])
    planted = torch.cat([torch.zeros(5000), torch.ones(500)]).long()
    first_component_sign = (top_direction_projection(z) > 0).long()
    assert not torch.equal(first_component_sign, planted) and not torch.equal(first_component_sign, 1 - planted)
    assign = two_means(z)
    assert torch.equal(assign, planted) or torch.equal(assign, 1 - planted)
    found = activation_clustering(z, torch.zeros(5500, dtype=torch.long))
    assert found.precision_recall(planted.bool()) == (1.0, 1.0)


def test_two_means_in_one_dimension_is_the_best_cut_of_the_sorted_values():
    g = torch.Generator().manual_seed(1)
    values = torch.cat([torch.randn(40, generator=g), torch.randn(9, generator=g) * 0.3 + 2.5]).double()
    assign = two_means(values[:, None])

    def inertia(a):
        return sum(float((values[a == k] - values[a == k].mean()).pow(2).sum()) for k in (0, 1))

    ordered = values.sort().values
    brute = min(float((ordered[:c] - ordered[:c].mean()).pow(2).sum() + (ordered[c:] - ordered[c:].mean()).pow(2).sum())
                for c in range(1, len(values)))
    assert inertia(assign) == pytest.approx(brute, rel=1e-12)
    assert values[assign == 1].min() > values[assign == 0].max()  # a cut: one side all above the other


def test_detection_validates_and_reads_the_last_linear_input():
    with pytest.raises(ValueError, match="features must be"):
        spectral_signatures(torch.zeros(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown poison detector"):
        detect_poison(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long), "svm")
    assert not activation_clustering(torch.rand(10, 4), torch.zeros(10, dtype=torch.long)).suspects.any()  # too few
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.rand(7, 1, 2, 2)
    assert torch.allclose(penultimate_features(net, x, batch_size=3), net[:3](x))
    with pytest.raises(ValueError, match="no nn.Linear"):
        penultimate_features(nn.Flatten(), x)


# ----------------------------------------------------------------------------- the command line

SMALL = ["--dataset", "mnist5k", "--train-subset", "300", "--epochs", "1", "--batch-size", "100", "--threads", "1",
         "--device", "cpu"]


def last_path(capsys) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_poisoned_training_reports_attack_success_and_never_touches_the_test_set(runs_root, capsys, monkeypatch):
    import rlab.vision.classifier as classifier
    from rlab.vision.data import load_dataset

    test_before = load_dataset("mnist5k", "test").images.clone()
    seen = {}
    real_poison = classifier.poison_training_set

    def spy(data, badnets):
        out = real_poison(data, badnets)
        seen["n"], seen["poisoned"] = len(data), int(out[1].sum())
        return out

    monkeypatch.setattr(classifier, "poison_training_set", spy)
    monkeypatch.setattr(classifier, "_plot_learning_curve", lambda *a: None)
    assert main(["classifier", "train", *SMALL, "--poison", "badnets", "--poison-rate", "0.07", "--target", "2",
                 "--trigger", "square:3:tl"]) == 0
    run = last_path(capsys)
    s = json.loads((run / "summary.json").read_text())
    assert seen == {"n": 300, "poisoned": 21} and s["backdoor/num_poisoned"] == 21
    assert s["backdoor/target"] == 2 and s["backdoor/trigger"] == "square:3:tl" and s["backdoor/poison_rate"] == 0.07
    assert "backdoor/attack_success_rate" in (run / "metrics.csv").read_text().splitlines()[0]
    model, _ = classifier.load_classifier(run)
    test = load_dataset("mnist5k", "test")
    assert torch.equal(test.images, test_before)
    with torch.no_grad():
        accuracy = (model(test.float()).argmax(1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(s["test/accuracy"], abs=1e-6), "test accuracy must be on the clean test set"
    asr = attack_success_rate(model, test.float(), test.labels, Trigger("square", 3, "tl"), 2)
    assert asr == pytest.approx(s["backdoor/attack_success_rate"], abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--poison-rate", "0.1"], "--poison-rate configures a poisoning attack: give it with --poison badnets"),
    (["--target", "1", "--trigger", "square"], "--target, --trigger configure a poisoning attack"),
    (["--poison", "badnets", "--poison-rate", "1.2"], "--poison-rate is the poisoned share of the training set"),
    (["--poison", "badnets", "--trigger", "star:3"], "--trigger: trigger pattern must be one of square, checker"),
    (["--poison", "badnets", "--target", "10"], "--target 10 is not a class of mnist5k"),
    (["--detector", "spectral"], "--detector chooses how --remove-suspects finds the poison"),
])
def test_poison_options_are_refused_alone_or_out_of_range(runs_root, capsys, args, message):
    assert main(["classifier", "train", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (runs_root / "classifier").exists()


def tiny_image_folder(root: Path, per_class=24, size=12) -> str:
    """Three classes of 12x12 greyscale images: a bright row, a bright column, a bright diagonal."""
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size)).astype(np.uint8)
            pos = 2 + i % 6
            if c == 0:
                img[pos, 2:10] = 230
            elif c == 1:
                img[2:10, pos] = 230
            else:
                np.fill_diagonal(img[pos - 2:, :], 230)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return f"imagefolder:{root}"


def test_bench_backdoor_writes_one_row_per_model_with_the_budget(runs_root, tmp_path, capsys, monkeypatch):
    import rlab.vision.classifier as classifier

    monkeypatch.setattr(classifier, "_plot_learning_curve", lambda *a: None)
    dataset = tiny_image_folder(tmp_path / "images")
    assert main(["bench", "backdoor", "--dataset", dataset, "--epochs", "2", "--poison-rate", "0.1,0.05",
                 "--target", "1", "--trigger", "square:3", "--detectors", "spectral,clustering", "--batch-size", "24",
                 "--gallery", "3", "--threads", "1", "--device", "cpu"]) == 0
    bench = last_path(capsys)
    with open(bench / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["poison_rate"], r["model"], r["detector"]) for r in rows] == [
        ("0.0", "clean", ""), ("0.05", "poisoned", ""), ("0.05", "retrained", "spectral"),
        ("0.05", "retrained", "clustering"), ("0.1", "poisoned", ""), ("0.1", "retrained", "spectral"),
        ("0.1", "retrained", "clustering")]
    assert [r["num_poisoned"] for r in rows] == ["0", "4", "4", "4", "7", "7", "7"]  # round(rate * 72)
    for r in rows[1:]:
        options = json.loads((Path(r["run"]) / "config.json").read_text())["options"]
        assert options["poison_rate"] == float(r["poison_rate"]) and options["target"] == 1
        assert options["remove_suspects"] == (None if r["model"] == "poisoned" else rows[1 if r["poison_rate"] == "0.05" else 4]["run"])
    report = (bench / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| poison rate |") and len(table) == 8
    assert all(line.split("|")[1].strip().endswith("%") for line in table[1:]), "every row names its poison rate"
    for name in ("backdoor.png", "gallery.png", "summary.json"):
        assert (bench / name).is_file()


def test_bench_backdoor_refuses_bad_input(runs_root, capsys):
    for args, message in [(["--poison-rate", "0"], "--poison-rate values are shares"),
                          (["--detectors", "svm"], "--detectors: 'svm' is not a detector"),
                          (["--trigger", "square:-1"], "--trigger:")]:
        assert main(["bench", "backdoor", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not runs_root.exists()


def test_remove_suspects_refuses_a_run_of_another_training_set(runs_root, capsys):
    from rlab.runs import RunDir
    from rlab.vision.classifier import TrainConfig

    other = RunDir.create("classifier", "other", 1, TrainConfig(poison="badnets", seed=1, train_subset=300)).path
    assert main(["classifier", "train", *SMALL, "--poison", "badnets", "--remove-suspects", str(other)]) == 2
    err = capsys.readouterr().err
    assert "was trained on another training set" in err and err.count("\n") == 1, err
    assert [p.name for p in (runs_root / "classifier").iterdir()] == [other.name]
