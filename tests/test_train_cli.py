"""`rlab train` / `rlab eval` end to end with tiny budgets: run folders, resume, determinism, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from rlab.cli import main
from rlab.runs import RunDir
from rlab.rl.evaluation import load_agent

TINY = ["--env", "CartPole-v1", "--n-envs", "4", "--n-steps", "32", "--no-progress", "--eval-episodes", "2",
        "--device", "cpu"]


def _run(capsys, *argv: str) -> Path:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return Path(out[-1])


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_eval_resume_round_trip(runs_root, capsys):
    run = _run(capsys, "train", "--algo", "ppo", "--steps", "512", "--checkpoint-every", "256", "--obs-norm",
               "--eval-every", "256", *TINY)
    assert run.parent == runs_root / "rl" and run.name.startswith("CartPole-v1__ppo__0__")
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["algo"] == "ppo" and config["options"]["variant"] == "ppo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] == 512 and {"eval/mean_return", "eval/std_return", "wall_seconds"} <= set(summary)
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == [128, 256, 384, 512]
    assert {"charts/sps", "losses/policy", "losses/value", "losses/entropy", "losses/approx_kl",
            "eval/mean_return"} <= set(rows[0])

    # observation normalisation statistics come back with the agent
    agent, options = load_agent(run)
    saved = RunDir.open(run).load_checkpoint()["learner"]["agent"]
    assert torch.equal(agent.obs_norm.mean, saved["obs_norm.mean"]) and agent.obs_norm.mean.abs().sum() > 0
    assert torch.equal(agent.obs_norm.var, saved["obs_norm.var"]) and not torch.allclose(agent.obs_norm.var, torch.ones(4))
    assert options["env"] == "CartPole-v1"

    assert _run(capsys, "eval", str(run), "--episodes", "3", "--video", "--device", "cpu") == run
    (result,) = (run / "eval").glob("eval_*.json")
    data = json.loads(result.read_text())
    assert len(data["returns"]) == 3 and data["eval/mean_return"] == pytest.approx(sum(data["returns"]) / 3)
    (gif,) = (run / "eval").glob("*.gif")
    assert gif.read_bytes()[:3] == b"GIF"
    assert main(["eval", str(run), "--episodes", "2", "--stochastic", "--device", "cpu"]) == 0

    # a crash after the checkpoint leaves rows the checkpoint does not know: resume drops them
    stale = RunDir.open(run)
    stale.log(999_999, flush=True, **{"charts/episode_return": 1.0})
    resumed = _run(capsys, "train", "--resume", str(run), "--steps", "1024", "--no-progress", "--device", "cpu")
    assert resumed == run
    steps = [int(r["step"]) for r in _rows(run)]
    assert steps == [128, 256, 384, 512, 640, 768, 896, 1024]
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 1024


def test_same_seed_gives_identical_metrics(runs_root, capsys):
    a = _run(capsys, "train", "--algo", "a2c", "--steps", "640", "--seed", "3", *TINY)
    b = _run(capsys, "train", "--algo", "a2c", "--steps", "640", "--seed", "3", *TINY)
    c = _run(capsys, "train", "--algo", "a2c", "--steps", "640", "--seed", "4", *TINY)
    assert a != b

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("charts/sps", "time/train_seconds")} for r in rows]

    assert strip(_rows(a)) == strip(_rows(b))
    assert strip(_rows(a)) != strip(_rows(c))


@pytest.mark.parametrize("algo_args", [
    ["--algo", "vpg", "--returns", "immediate", "--baseline", "none"],
    ["--algo", "vpg", "--returns", "discounted", "--baseline", "value", "--value-epochs", "2"],
    ["--algo", "ac", "--critic", "mc"],
    ["--algo", "ac", "--critic", "td"],
])
def test_every_ladder_variant_trains_and_labels_itself(runs_root, capsys, algo_args):
    run = _run(capsys, "train", *algo_args, "--steps", "256", *TINY)
    options = json.loads((run / "config.json").read_text())["options"]
    assert options["variant"].startswith(algo_args[1])
    assert all(set(r) >= {"step", "losses/policy"} for r in _rows(run))


def test_gaussian_policy_on_pendulum(runs_root, capsys):
    run = _run(capsys, "train", "--algo", "ppo", "--env", "Pendulum-v1", "--steps", "256", "--n-envs", "2",
               "--n-steps", "128", "--epochs", "1", "--no-progress", "--eval-episodes", "1", "--device", "cpu")
    agent, _ = load_agent(run)
    dist = agent(torch.zeros(5, 3))
    assert dist.sample().shape == (5, 1)


def test_several_seeds_give_one_folder_each(runs_root, capsys):
    assert main(["train", "--algo", "ppo", "--steps", "128", "--seeds", "2", "--seed", "5", *TINY]) == 0
    paths = capsys.readouterr().out.strip().splitlines()
    assert [json.loads((Path(p) / "config.json").read_text())["seed"] for p in paths] == [5, 6]


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--algo", "nope"], "--algo: 'nope' is not allowed; choose from vpg, ac"),
    (["train", "--env", "CartPol-v1", "--steps", "64"], "did you mean 'cartpole-v1'"),
    (["train", "--algo", "ppo", "--returns", "immediate"], "--returns is not an option of --algo ppo (it belongs to vpg)"),
    (["train", "--algo", "vpg", "--clip", "0.1"], "--clip is not an option of --algo vpg (it belongs to ppo, sa-ppo)"),
    (["train", "--adv-obs", "pgd"], "--adv-obs pgd needs --adv-eps in (0, 1]"),
    (["train", "--adv-obs", "pgd", "--adv-eps", "0"], "--adv-obs pgd needs --adv-eps in (0, 1]"),
    (["train", "--adv-eps", "0.1"], "--adv-eps, --adv-frac and --adv-constant configure --adv-obs"),
    (["train", "--adv-obs", "pgd", "--adv-eps", "0.1", "--adv-constant", "1"], "--adv-constant must be in [0, 1)"),
    (["train", "--resume", "runs/x", "--lr", "0.1"], "--lr would be ignored"),
    (["train", "--resume", "runs/x", "--env", "Acrobot-v1"], "--env would be ignored"),
    (["train", "--device", "cuda:7"], "device 'cuda:7'"),
    (["eval", "runs/x", "--device", "cuda:7"], "device 'cuda:7'"),
    (["classifier", "train", "--device", "cuda:7"], "device 'cuda:7'"),
    (["train", "--gamma", "1.5"], "--gamma must be in [0, 1]"),
    (["eval", "/nonexistent/run"], "not a run folder"),
])
def test_user_errors_are_one_line_with_status_2(runs_root, capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err.lower()
