"""The one core (issue #14): the algorithm registry, presets as overrides, --dry-run, refusals, shared parts."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rlab.cli import main
from rlab.errors import UserError
from rlab.rl import algos
from rlab.rl.algos import vpg
from rlab.rl.onpolicy import on_policy
from rlab.rl.presets import PRESETS
from rlab.rl.trainer import TrainConfig, resolve, train

TINY = ["--env", "CartPole-v1", "--n-envs", "2", "--n-steps", "32", "--eval-episodes", "2", "--no-progress",
        "--device", "cpu"]


def _defaults(algo: str) -> dict:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(algos.get(algo).options)}


def test_presets_only_override_and_only_options_their_algorithm_has():
    for env, table in PRESETS.items():
        for algo, overrides in table.items():
            defaults = _defaults(algo)
            assert set(overrides) <= set(defaults), (env, algo, set(overrides) - set(defaults))
            repeated = [k for k, v in overrides.items() if defaults[k] == v]
            assert not repeated, f"{env}/{algo} repeats its defaults {repeated}: one table of defaults per algorithm"


def test_dry_run_prints_each_value_with_where_it_came_from_and_trains_nothing(runs_root, capsys):
    assert main(["train", "--algo", "ppo", "--env", "CartPole-v1", "--lr", "2e-3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert lines["lr"] == ["0.002", "command", "line"]
    assert lines["gamma"] == ["0.98", "preset", "CartPole-v1"]
    assert lines["max-grad-norm"] == ["0.5", "ppo", "default"]
    assert "returns" not in lines and "critic" not in lines  # vpg's and ac's options are not ppo's
    assert not runs_root.exists() or not any(runs_root.rglob("config.json"))


def test_config_json_keeps_the_resolved_options_and_their_sources(runs_root, capsys):
    assert main(["train", "--algo", "vpg", "--steps", "128", "--lr", "0.02", *TINY]) == 0
    run = capsys.readouterr().out.strip().splitlines()[-1]
    options = json.loads(open(f"{run}/config.json").read())["options"]
    assert options["lr"] == 0.02 and options["option_sources"]["lr"] == "command line"
    assert options["option_sources"]["returns"] == "vpg default" and options["returns"] == "discounted"
    assert options["clip"] is None  # ppo's option stays unset for vpg


def test_a_new_algorithm_is_one_registry_entry_and_the_shell_trains_it(runs_root, monkeypatch):
    seen = []

    def update(o, agent, optimizer, batch, progress_left, generator):
        seen.append(len(batch.obs))
        return vpg.update(o, agent, optimizer, batch, progress_left, generator)

    toy = on_policy("toy", "vpg under another name", vpg.VPGOptions, vpg.advantages, update, label=lambda o: "toy!")
    monkeypatch.setitem(algos.ALGORITHMS, "toy", toy)
    run = train(TrainConfig(algo="toy", env="CartPole-v1", steps=128, n_envs=2, n_steps=32, eval_episodes=2,
                            progress=False, device="cpu"))
    assert run.name.startswith("CartPole-v1__toy__0__") and len(seen) == 2
    assert json.loads((run / "summary.json").read_text())["variant"] == "toy!"


def test_resolve_fills_every_option_of_the_algorithm_and_validates_them():
    cfg = resolve(TrainConfig(algo="a2c"))
    assert cfg.env == "CartPole-v1" and cfg.n_steps == 5 and cfg.obs_norm is False and cfg.clip is None
    with pytest.raises(UserError, match="--gae-lambda must be in"):
        resolve(TrainConfig(algo="a2c", gae_lambda=2.0))
    with pytest.raises(UserError, match="--clip is not an option of --algo a2c"):
        TrainConfig(algo="a2c", clip=0.3)


def test_plot_returns_against_wall_clock_time(runs_root, capsys):
    assert main(["train", "--algo", "a2c", "--steps", "320", *TINY]) == 0
    run = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["plot", "returns", run, "--x", "wall"]) == 0
    png = capsys.readouterr().out.strip().splitlines()[-1]
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_bench_folders_without_a_seed_have_no_none_in_their_name(runs_root):
    from rlab.runs import RunDir

    run = RunDir.create("bench", "ladder", None, {})
    assert "None" not in run.path.name and run.path.name.startswith("ladder__20")


def test_defenses_take_parameters_on_the_command_line():
    import defenses

    jpeg = defenses.make_defense("jpeg:quality=50")
    assert isinstance(jpeg, defenses.JPEG) and jpeg.quality == 50
    assert defenses.parse_spec("blur:sigma=1.5") == ("blur", {"sigma": 1.5})
    with pytest.raises(TypeError, match="defense 'jpeg' has no parameter 'qualty'; its parameters: .*quality"):
        defenses.make_defense("jpeg:qualty=50")
    with pytest.raises(ValueError, match="is not key=value"):
        defenses.make_defense("jpeg:50")


def test_bench_attacks_refuses_a_bad_defense_parameter_in_one_line(runs_root, capsys):
    assert main(["bench", "attacks", "--classifier", "runs/x", "--defenses", "none,jpeg:qualty=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no parameter 'qualty'" in err


def test_classifier_resume_extends_a_finished_run_with_more_epochs(runs_root, capsys):
    args = ["classifier", "train", "--dataset", "mnist5k", "--train-subset", "300", "--batch-size", "100",
            "--threads", "1", "--device", "cpu", "--no-progress"]
    assert main([*args, "--epochs", "1"]) == 0
    run = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["classifier", "train", "--resume", run, "--lr", "0.5"]) == 2
    assert "--lr would be ignored" in capsys.readouterr().err
    assert main(["classifier", "train", "--resume", run, "--epochs", "2", "--no-progress"]) == 0
    rows = open(f"{run}/metrics.csv").read().splitlines()
    assert len(rows) == 3  # header, epoch 1, epoch 2
    assert json.loads(open(f"{run}/summary.json").read())["epochs"] == 2
    assert json.loads(open(f"{run}/config.json").read())["options"]["epochs"] == 2
    assert torch.load(f"{run}/checkpoints/last.pt", weights_only=True)["epoch"] == 2
