"""`rlab bench patch`, `rlab bench reprogram` and bench/patch_vs_art.py end to end on a tiny trained classifier."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    import rlab.runs

    root = tmp_path_factory.mktemp("runs")
    with rlab.runs.use_runs_root(root):
        assert main(["classifier", "train", "--dataset", "mnist5k", "--model", "mnist_small", "--epochs", "1", "--train-subset", "500",
                     "--device", "cpu", "--threads", "1"]) == 0
    (run,) = (root / "classifier").iterdir()
    return run


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("full_resolution", [False, True])
def test_bench_patch_writes_success_against_area(tiny_classifier, runs_root, capsys, full_resolution):
    assert main(["bench", "patch", "--classifier", str(tiny_classifier), "--target", "3", "--sizes", "0.05,0.1",
                 "--steps", "3", "--batch-size", "16", "--n-fit", "48", "--n", "30", "--gallery", "3",
                 "--device", "cpu", "--threads", "1"] + ["--full-resolution"] * full_resolution) == 0
    (bench,) = (runs_root / "bench").iterdir()
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(bench)
    rows = read_rows(bench / "results.csv")
    assert [float(r["area"]) for r in rows] == [0.05, 0.1] and [int(r["patch_side"]) for r in rows] == [6, 8]
    for r in rows:
        assert 0 < float(r["area_share"]) <= float(r["area"]) and r["target"] == "3"
        assert int(r["n_images"]) == 30 and int(r["grad_steps"]) == 3 * 16
        assert 0 <= float(r["targeted_success"]) <= 1
    for name in ("success.png", "gallery.png", "report.md", "summary.json", "checkpoints/patches.pt"):
        assert (bench / name).is_file()
    assert "| 10% | 8 |" in (bench / "report.md").read_text()
    assert json.loads((bench / "summary.json").read_text())["target"] == "3"
    if full_resolution:  # kept at the image's 28x28, pasted at its budget's side
        patches = torch.load(bench / "checkpoints" / "patches.pt")
        assert {tuple(p.shape) for p in patches.values()} == {(1, 28, 28)}


@pytest.mark.parametrize("args, message", [
    (["--sizes", "0.9"], "--sizes values must be patch areas in (0, 0.5]"),
    (["--target", "cat"], "--target 'cat' is not a class of this model"),
    (["--rotation", "270"], "--rotation must be in [0, 180]"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
])
def test_bench_patch_bad_input_is_one_line_exit_2(tiny_classifier, runs_root, capsys, args, message):
    assert main(["bench", "patch", "--classifier", str(tiny_classifier), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (runs_root / "bench").exists(), "a refused command must not leave a run folder"


def test_bench_reprogram_reports_the_trained_victim_and_the_control(tiny_classifier, runs_root, capsys):
    assert main(["bench", "reprogram", "--classifier", str(tiny_classifier), "--form", "frame", "--source-size", "16",
                 "--n-train", "200", "--epochs", "1", "--gallery", "2", "--device", "cpu", "--threads", "1"]) == 0
    (bench,) = (runs_root / "bench").iterdir()
    rows = read_rows(bench / "results.csv")
    assert [r["victim"] for r in rows] == ["trained", "untrained"]
    for r in rows:
        assert int(r["program_pixels"]) == 28 * 28 - 16 * 16 and int(r["grad_steps"]) == 200
        assert r["form"] == "frame" and r["scored_on"] == "test"
        assert 0 <= float(r["heldout_accuracy"]) <= 1
    for name in ("accuracy.png", "gallery.png", "report.md", "checkpoints/programs.pt"):
        assert (bench / name).is_file()


def test_bench_reprogram_validate_holds_out_training_digits_and_never_reads_the_test_split(tiny_classifier, runs_root,
                                                                                           monkeypatch):
    import rlab.vision.data as data

    load = data.load_dataset

    def no_test_split(name, split, *args, **kwargs):
        assert split != "test", "--validate loaded the test split"
        return load(name, split, *args, **kwargs)

    monkeypatch.setattr(data, "load_dataset", no_test_split)
    assert main(["bench", "reprogram", "--classifier", str(tiny_classifier), "--form", "affine", "--validate", "100",
                 "--n-train", "150", "--epochs", "1", "--gallery", "0", "--no-control", "--device", "cpu",
                 "--threads", "1"]) == 0
    (bench,) = (runs_root / "bench").iterdir()
    (row,) = read_rows(bench / "results.csv")
    assert row["scored_on"] == "validation (100 training images)" and int(row["grad_steps"]) == 150
    assert int(row["program_pixels"]) == 28 * 28 and int(row["source_size"]) == 28


@pytest.mark.parametrize("args, message", [
    (["--label-map", "0,0,1,2,3,4,5,6,7,8"], "--label-map must list distinct victim classes"),
    (["--label-map", "0,1,2"], "--label-map needs one victim class per source class (10)"),
    (["--source-size", "40"], "--source-size 40 does not fit"),
    (["--form", "frame", "--source-size", "28"], "the frame form has no pixels left"),
    (["--validate", "5000"], "--validate 5000 holds out too many of the 4000 training images: at most 3999"),
    (["--form", "tile"], "--form"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--source-crop", "-1"], "--source-crop must be >= 0"),
    (["--source-crop", "14"], "--source-crop 14 leaves nothing of the 28x28 mnist5k images"),
    (["--shift", "-2"], "--shift must be >= 0"),
    (["--scale", "1.5"], "--scale must be in [0, 1)"),
])
def test_bench_reprogram_bad_input_is_one_line_exit_2(tiny_classifier, runs_root, capsys, args, message):
    assert main(["bench", "reprogram", "--classifier", str(tiny_classifier), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (runs_root / "bench").exists()


@pytest.mark.skipif(importlib.util.find_spec("art") is None or importlib.util.find_spec("torchvision") is None,
                    reason="ART's AdversarialPatchPyTorch needs the bench extra (make bench) and torchvision")
def test_patch_vs_art_smoke_runs_both_attacks():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "patch_vs_art.py"), "--smoke"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ART AdversarialPatchPyTorch" in out.stdout
    for ours in ("ours, ART's transformations", "ours, full EOT", "ours, full resolution, ART's transformations"):
        assert f"{ours}" in out.stdout and out.stdout.count(f"{ours}") >= 3, ours  # fit, table and ratio lines
    assert out.stdout.count("/ ART: wall time") == 3


def test_reprogram_gallery_takes_the_classes_in_turn_from_a_label_sorted_split():
    from rlab.vision.reprogram_bench import spread_over_classes

    y = torch.tensor([0, 0, 0, 1, 1, 2])
    assert spread_over_classes(y, 4).tolist() == [0, 3, 5, 1]
    assert spread_over_classes(y, 10).tolist() == [0, 3, 5, 1, 4, 2]
