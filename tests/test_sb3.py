"""Stable-Baselines3 agents as victims and subjects (rlab/rl/sb3.py): `rlab eval`, `rlab bench rl-attack`
and `rlab plot returns` on SB3 models trained here for a few thousand steps.

The PPO agent is written in rl-baselines3-zoo's layout by bench/sb3_zoo_train.py (its smoke check lives
here); the DQN agent is a plain `model.save` whose env only --env can tell.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlab.cli import main

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import sb3_zoo_train  # noqa: E402  (bench/sb3_zoo_train.py)

SEEDS = [100, 101, 102, 103, 104]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One temporary runs/ root for the module (the models are trained once)."""
    import rlab.runs

    path = tmp_path_factory.mktemp("sb3")
    patch = pytest.MonkeyPatch()
    patch.setenv("RLAB_RUNS", str(path / "runs"))
    patch.setattr(rlab.runs, "RUNS_ROOT", path / "runs")
    torch.manual_seed(0)
    yield path
    patch.undo()


@pytest.fixture(scope="module")
def zoo_ppo(root) -> Path:
    """`python bench/sb3_zoo_train.py --smoke`: the zoo's CartPole PPO for 4,096 steps, in the zoo's layout
    logs/ppo/CartPole-v1_1/: CartPole-v1.zip, CartPole-v1/{args,config}.yml, *.monitor.csv, evaluations.npz."""
    path = sb3_zoo_train.main(["--smoke", "--out", str(root / "logs")])
    assert path == root / "logs" / "ppo" / "CartPole-v1_1"
    return path


@pytest.fixture(scope="module")
def dqn_zip(root) -> Path:
    from stable_baselines3 import DQN

    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=500, train_freq=8, gradient_steps=2,
                target_update_interval=200, exploration_fraction=0.25, learning_rate=2e-3, seed=0, device="cpu",
                policy_kwargs=dict(net_arch=[64, 64]))
    model.learn(3000)
    model.save(root / "dqn_agent.zip")
    return root / "dqn_agent.zip"


def cli(*args) -> int:
    return main([str(a) for a in args])


def sb3_returns(model, env_id: str, seeds: list[int], vecnormalize: Path | None = None) -> list[float]:
    """SB3's own evaluate_policy, one deterministic episode per seed (make_vec_env seeds its env with `seed`)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    out = []
    for seed in seeds:
        env = make_vec_env(env_id, n_envs=1, seed=seed)
        if vecnormalize is not None:
            env = VecNormalize.load(str(vecnormalize), env)
            env.training, env.norm_reward = False, False
        rewards, _ = evaluate_policy(model, env, n_eval_episodes=1, deterministic=True, return_episode_rewards=True)
        out += rewards
    return out


def lab_returns(root: Path, model: Path, seeds: list[int], *extra) -> list[float]:
    """`rlab eval MODEL --episodes 1 --seed S` for each seed: the return in the eval JSON it wrote."""
    out = []
    for seed in seeds:
        before = set((root / "runs" / "eval").glob("*/eval_*.json"))
        assert cli("eval", model, "--episodes", 1, "--seed", seed, "--device", "cpu", *extra) == 0
        (new,) = set((root / "runs" / "eval").glob("*/eval_*.json")) - before
        out += json.loads(new.read_text())["returns"]
    return out


def test_zoo_ppo_clean_return_matches_evaluate_policy(root, zoo_ppo):
    from stable_baselines3 import PPO

    model = PPO.load(zoo_ppo / "CartPole-v1.zip", device="cpu")
    expected = sb3_returns(model, "CartPole-v1", SEEDS)
    assert np.mean(expected) > 40  # learned something: a random policy lasts ~22 steps
    # the zoo folder names its model and env (args.yml): no --env needed
    assert lab_returns(root, zoo_ppo, SEEDS) == expected


def test_dqn_clean_return_matches_evaluate_policy(root, dqn_zip):
    from stable_baselines3 import DQN

    expected = sb3_returns(DQN.load(dqn_zip, device="cpu"), "CartPole-v1", SEEDS)
    assert lab_returns(root, dqn_zip, SEEDS, "--env", "CartPole-v1") == expected


def test_attacks_run_on_the_sb3_networks(root, zoo_ppo, dqn_zip, capsys):
    """PPO's logits and DQN's Q-values through the same bench as the lab's agents: the worst-action attack costs
    return where noise of the same size does not."""
    assert cli("bench", "rl-attack", zoo_ppo, dqn_zip, "--env", "CartPole-v1", "--eps", "0,0.05",
               "--methods", "none,random,pgd-worst", "--episodes", 4, "--pgd-steps", 5, "--device", "cpu") == 0
    bench = Path(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(bench / "results.csv")))
    by = {(r["label"], r["method"], float(r["eps"])): float(r["mean_return"]) for r in rows}
    assert {r["label"] for r in rows} == {"SB3 PPO", "SB3 DQN"}
    for label in ("SB3 PPO", "SB3 DQN"):
        clean = by[label, "none", 0.0]
        assert clean > 40
        assert by[label, "pgd-worst", 0.05] < 0.5 * clean, rows
        assert by[label, "random", 0.05] > by[label, "pgd-worst", 0.05], rows
    assert (bench / "return_vs_eps.png").stat().st_size > 10_000


def test_vecnormalize_statistics_are_applied(root):
    """A model trained on VecNormalize'd observations, saved as CartPole-v1.zip with vecnormalize.pkl beside it:
    the lab matches evaluate_policy on the normalised env, and its logits are the policy's on normalised inputs."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from rlab.rl.sb3 import load_sb3_agent

    folder = root / "vecnorm"
    folder.mkdir()
    env = VecNormalize(make_vec_env("CartPole-v1", n_envs=4, seed=0), norm_reward=False)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=256, n_epochs=5, learning_rate=1e-3, seed=0, device="cpu")
    model.learn(2048)
    model.save(folder / "CartPole-v1.zip")  # the file name is the env id
    env.save(str(folder / "vecnormalize.pkl"))
    # statistics far from (0, 1): a policy fed raw observations would act otherwise
    assert np.abs(env.obs_rms.mean).max() > 0.05 or np.abs(np.sqrt(env.obs_rms.var) - 1).max() > 0.5
    expected = sb3_returns(model, "CartPole-v1", SEEDS, folder / "vecnormalize.pkl")
    assert lab_returns(root, folder / "CartPole-v1.zip", SEEDS) == expected

    agent, options = load_sb3_agent(folder / "CartPole-v1.zip")
    assert options["vecnormalize"] == str(folder / "vecnormalize.pkl")
    obs = torch.randn(64, 4) * torch.tensor([1.0, 1.0, 0.1, 1.0])
    normalised = torch.as_tensor(env.normalize_obs(obs.numpy()))
    with torch.no_grad():
        want = model.policy.get_distribution(normalised).distribution.logits
        raw = model.policy.get_distribution(obs).distribution.logits
        got = agent.pi(obs).logits
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, raw, atol=1e-3)


@pytest.mark.parametrize("algo, env_id, steps", [("sac", "Pendulum-v1", 200), ("td3", "Pendulum-v1", 0),
                                                  ("ppo", "Pendulum-v1", 0), ("a2c", "CartPole-v1", 0)])
def test_each_algorithm_loads_and_plays_as_sb3_predicts(root, algo, env_id, steps):
    """SAC's squashed actor unscaled to Pendulum's [-2, 2], TD3's, PPO's Gaussian mean clipped to the Box, A2C's
    logits: the lab's episodes return what evaluate_policy does (untrained weights test the plumbing as well)."""
    import stable_baselines3 as sb3

    cls = getattr(sb3, algo.upper())
    extra = dict(learning_starts=100) if algo in ("sac", "td3") else {}
    model = cls("MlpPolicy", env_id, seed=0, device="cpu", policy_kwargs=dict(net_arch=[32, 32]), **extra)
    model.learn(steps)
    path = root / f"{algo}_model.zip"
    model.save(path)
    expected = sb3_returns(model, env_id, SEEDS[:2])
    assert lab_returns(root, path, SEEDS[:2], "--env", env_id) == pytest.approx(expected, rel=1e-5)
    if algo == "sac":  # the continuous attack: ascent on ||mu(s') - mu(s)||^2 through SAC's actor
        assert cli("bench", "rl-attack", path, "--env", env_id, "--eps", "0,0.05", "--methods", "none,pgd",
                   "--episodes", 2, "--pgd-steps", 2, "--device", "cpu") == 0


def test_plot_returns_on_a_zoo_folder(root, zoo_ppo, capsys):
    from rlab.rl.sb3 import training_curve

    label, env_id, x, y = training_curve(zoo_ppo)
    monitors = sorted(zoo_ppo.glob("*.monitor.csv"))
    assert len(monitors) == 8 and (label, env_id) == ("SB3 PPO", "CartPole-v1")
    lengths = sum(int(r["l"]) for m in monitors for r in csv.DictReader(open(m).readlines()[1:]))
    assert x[-1] == lengths and 3000 < lengths <= 4096 and len(y) == len(x)  # every finished episode, once
    # the zoo's logs/ root (one experiment below it) and a lab-style output path
    out = root / "zoo_returns.png"
    assert cli("plot", "returns", root / "logs", "--out", out) == 0
    assert out.stat().st_size > 10_000
    # without Monitor files the EvalCallback's evaluations.npz is drawn
    evals = root / "evals_only"
    evals.mkdir()
    (evals / "evaluations.npz").write_bytes((zoo_ppo / "evaluations.npz").read_bytes())
    label, _, x, y = training_curve(evals)
    assert label == "SB3 (eval)" and list(x) == [2048, 4096]
    assert cli("plot", "returns", evals, "--x", "wall", "--out", root / "x.png") == 2
    assert "keeps no clock" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("not_sb3", "is not a Stable-Baselines3 model"),
    ("no_env", "give --env ID"),
    ("contrib", "supported: Stable-Baselines3's PPO, A2C, DQN, SAC, TD3"),
    ("wrong_env", "give the model's --env"),
    ("env_for_run_folder", "--env is for Stable-Baselines3 models"),
    ("missing_vecnormalize", "no vecnormalize.pkl"),
    ("missing", "no such file"),
])
def test_bad_input_is_one_line_exit_2(root, dqn_zip, zoo_ppo, case, message, capsys, tmp_path):
    import zipfile

    if case == "not_sb3":
        path = tmp_path / "notes.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
        args = ["eval", path, "--env", "CartPole-v1"]
    elif case == "no_env":
        args = ["eval", dqn_zip]
    elif case == "contrib":  # an sb3-contrib model: its policy lives in another package
        path = tmp_path / "CartPole-v1.zip"
        with zipfile.ZipFile(dqn_zip) as src, zipfile.ZipFile(path, "w") as dst:
            for name in src.namelist():
                data = src.read(name)
                if name == "data":
                    data = data.replace(b"stable_baselines3.dqn.policies", b"sb3_contrib.qrdqn.policies")
                dst.writestr(name, data)
        args = ["bench", "rl-attack", path]
    elif case == "wrong_env":
        args = ["eval", dqn_zip, "--env", "Pendulum-v1"]
    elif case == "env_for_run_folder":
        (tmp_path / "config.json").write_text("{}")
        args = ["eval", tmp_path, "--env", "CartPole-v1"]
    elif case == "missing_vecnormalize":  # config.yml says normalize, the statistics are gone
        folder = tmp_path / "ppo" / "CartPole-v1_1"
        (folder / "CartPole-v1").mkdir(parents=True)
        (folder / "CartPole-v1.zip").write_bytes((zoo_ppo / "CartPole-v1.zip").read_bytes())
        (folder / "CartPole-v1" / "config.yml").write_text("normalize: true\npolicy: MlpPolicy\n")
        args = ["eval", folder]
    else:
        args = ["eval", tmp_path / "absent.zip", "--env", "CartPole-v1"]
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
