"""`rlab bench rl-attack`: return vs eps under observation attacks, CSV + plot in a bench run folder."""

import csv
import json

import gymnasium
import pytest
import torch
from torch.distributions import Categorical

from rlab.rl.attack_bench import RLAttackConfig, attack_curve
from rlab.rl.evaluation import greedy_actor, return_floor, run_episodes
from rlab.cli import main
from rlab.config import make_config
from rlab.errors import UserError

GAINS = torch.tensor([0.1, 0.5, 10.0, 2.0])


def balancing_policy(obs: torch.Tensor) -> Categorical:
    """A hand-made CartPole controller that balances the pole for the full 500 steps."""
    score = obs @ GAINS
    return Categorical(logits=torch.stack((-score, score), -1))


def test_pgd_costs_a_good_controller_more_than_noise_of_the_same_size():
    rows = attack_curve(balancing_policy, "CartPole-v1", [0.0, 0.05], ["none", "random", "pgd"], episodes=3, seed=0,
                        pgd_steps=5, device=torch.device("cpu"))
    got = {(r["method"], r["eps"]): r for r in rows}
    assert set(got) == {("none", 0.0), ("none", 0.05), ("random", 0.0), ("random", 0.05), ("pgd", 0.0), ("pgd", 0.05),
                        ("worst", 0.0), ("worst", 0.05)}
    assert got["worst", 0.05]["strongest"] == "pgd" and got["worst", 0.05]["mean_return"] == got["pgd", 0.05]["mean_return"]
    assert got["none", 0.0]["mean_return"] == 500
    assert got["pgd", 0.0]["mean_return"] == 500
    assert got["random", 0.05]["mean_return"] >= 450
    assert got["pgd", 0.05]["mean_return"] < 250
    assert got["pgd", 0.05]["relative_return"] == pytest.approx(got["pgd", 0.05]["mean_return"] / 500)
    for r in rows:
        assert r["min_return"] <= r["mean_return"] <= r["max_return"]


def pumping_policy(obs: torch.Tensor) -> Categorical:
    """Acrobot: torque along the second joint's angular velocity (pumps energy in; swings up in 64-121 steps)."""
    score = 5 * torch.sign(obs[:, 5])
    return Categorical(logits=torch.stack((-score, torch.zeros_like(score), score), -1))


def test_kept_share_counts_from_the_lowest_possible_return_where_returns_are_negative():
    assert return_floor("CartPole-v1", 3, 0) == (0.0, "lowest possible return")
    assert return_floor("Acrobot-v1", 3, 0)[0] == -500
    assert return_floor("Pendulum-v1", 3, 0)[0] == pytest.approx(-200 * 16.2736, abs=0.01)
    rows = attack_curve(pumping_policy, "Acrobot-v1", [0.0, 0.5], ["none", "random"], episodes=3, seed=0,
                        pgd_steps=1, device=torch.device("cpu"))
    got = {(r["method"], r["eps"]): r for r in rows}
    clean, noisy = got["none", 0.0]["mean_return"], got["random", 0.5]["mean_return"]
    assert -300 < clean < -60  # the controller swings up, so the floor is not its return
    assert got["random", 0.5]["return_floor"] == -500
    assert got["random", 0.5]["relative_return"] == pytest.approx((noisy + 500) / (clean + 500))
    assert got["none", 0.0]["relative_return"] == 1


def test_return_floor_without_a_reward_bound_is_the_random_policy_on_the_same_episodes():
    floor, how = return_floor("LunarLander-v3", 4, 1)
    assert how.startswith("uniformly random") and -400 < floor < -50
    assert return_floor("LunarLander-v3", 4, 1)[0] == floor  # seeded: the same episodes, the same actions
    assert return_floor("LunarLander-v3", 4, 2)[0] != floor


def test_sampled_play_draws_from_the_policy_and_replays_the_same_draws_under_every_attack():
    def coin(obs):  # an even policy: its argmax is always "left", its samples are a fair coin
        return Categorical(logits=torch.zeros(len(obs), 2))

    greedy = attack_curve(coin, "CartPole-v1", [0.0], ["none"], episodes=20, seed=0, pgd_steps=1,
                          device=torch.device("cpu"))
    rows = attack_curve(coin, "CartPole-v1", [0.0, 0.05], ["none", "random"], episodes=20, seed=0, pgd_steps=1,
                        device=torch.device("cpu"), sample=True)
    got = {(r["method"], r["eps"]): r["mean_return"] for r in rows}
    assert greedy[0]["mean_return"] < 11, "always pushing left drops the pole within ~10 steps"
    assert 15 < got["none", 0.0] < 35, "a fair coin balances ~22 steps on average"
    assert got["random", 0.0] == got["none", 0.0], "no perturbation and the same draws: the same episodes"
    assert RLAttackConfig(run_dir="x", sample=True).sample


def test_episode_returns_count_each_episode_once_and_are_seeded():
    def always_left(obs):
        return Categorical(logits=torch.tensor([[5.0, 0.0]]).expand(len(obs), 2))

    act = greedy_actor(always_left, gymnasium.spaces.Discrete(2))
    a = run_episodes(act, "rlab/TorchCartPole-v1", 6, 1, perturb=lambda o: o)
    b = run_episodes(act, "rlab/TorchCartPole-v1", 6, 1)
    assert a.shape == (6,) and (a == b).all()
    assert ((a >= 8) & (a <= 12)).all(), "pushing left all the time drops the pole in about 10 steps"


def test_config_validates_its_options():
    cfg = RLAttackConfig(run_dir="some/run", eps=[0.0, 0.1])
    assert cfg.run_dir == ["some/run"]
    with pytest.raises(UserError, match="eps"):
        RLAttackConfig(run_dir="x", eps=[-0.1])
    with pytest.raises(UserError, match="methods"):
        make_config(RLAttackConfig, run_dir=["x"], methods=["cw"])
    with pytest.raises(UserError, match="episodes"):
        RLAttackConfig(run_dir="x", episodes=0)


@pytest.mark.slow
def test_cli_end_to_end_on_a_tiny_trained_agent(runs_root, capsys):
    assert main(["train", "--algo", "ppo", "--env", "CartPole-v1", "--steps", "512", "--n-envs", "4", "--n-steps", "64",
                 "--eval-episodes", "2", "--no-progress"]) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["bench", "rl-attack", run_dir, run_dir, "--eps", "0,1/20", "--episodes", "3", "--pgd-steps", "3"]) == 0
    bench = runs_root / "bench"
    (folder,) = list(bench.iterdir())
    assert folder.name.startswith("rl-attack__CartPole-v1__0__")
    with open(folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 5 * 2  # two runs x (four methods + the worst case) x two eps
    assert {r["method"] for r in rows} == {"none", "random", "fgsm", "pgd", "worst"}
    assert {float(r["eps"]) for r in rows} == {0.0, 0.05}
    assert all(float(r["std_return"]) >= 0 and int(r["episodes"]) == 3 for r in rows)
    assert (folder / "return_vs_eps.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary[run_dir]["label"] == "ppo"
    assert main(["bench", "rl-attack", str(runs_root / "missing"), "--eps", "0.1"]) == 2


def test_worst_action_attack_runs_in_the_curve_and_needs_a_rule_for_the_env():
    rows = attack_curve(balancing_policy, "CartPole-v1", [0.0, 0.05], ["none", "pgd-worst"], episodes=2, seed=0,
                        pgd_steps=3, device=torch.device("cpu"))
    got = {(r["method"], r["eps"]): r["mean_return"] for r in rows}
    assert got["pgd-worst", 0.0] == 500 and got["pgd-worst", 0.05] < 500
    assert RLAttackConfig(run_dir="x", methods=["none", "pgd-worst"]).methods == ["none", "pgd-worst"]
    with pytest.raises(UserError, match="worst-action rule for Acrobot-v1"):
        attack_curve(balancing_policy, "Acrobot-v1", [0.1], ["pgd-worst"], episodes=1, seed=0, pgd_steps=1,
                     device=torch.device("cpu"))


def test_adv_frac_validates_and_attacks_that_fraction_of_the_training_observations():
    from rlab.rl.trainer import TrainConfig, _observation_attack

    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(UserError, match="--adv-frac must be in"):
            TrainConfig(adv_obs="pgd", adv_eps=0.05, adv_frac=bad)
    torch.manual_seed(0)
    obs = (torch.rand(2000, 4) - 0.5) * torch.tensor([0.2, 0.5, 0.1, 0.5])
    changed = {}
    for frac in (1.0, 0.3):
        attack = _observation_attack(TrainConfig(env="CartPole-v1", adv_obs="pgd", adv_eps=0.05, adv_frac=frac), balancing_policy,
                                     torch.device("cpu"))
        seen = attack(obs)
        assert seen.shape == obs.shape
        changed[frac] = (seen != obs).any(1).float().mean().item()
    assert changed[1.0] > 0.95
    assert 0.25 < changed[0.3] < 0.35, "about 30% of the observations are attacked, the rest left exactly as they are"


def test_pgd_mix_attacks_each_training_observation_with_pgd_or_pgd_worst():
    from envs.observation_attacks import observation_scale, worst_action_rule
    from rlab.rl.trainer import TrainConfig, _observation_attack

    torch.manual_seed(0)
    obs = (torch.rand(2000, 4) - 0.5) * torch.tensor([0.2, 0.5, 0.1, 0.5])
    # where the clean action already is the worst one, pgd-worst has nothing to do and pgd still pushes
    idle = balancing_policy(obs).logits.argmax(-1) == worst_action_rule("CartPole-v1")(obs)
    assert 500 < idle.sum() < 1500
    changed = {}
    for method in ("pgd", "pgd-worst", "pgd-mix"):
        attack = _observation_attack(TrainConfig(env="CartPole-v1", adv_obs=method, adv_eps=0.05), balancing_policy,
                                     torch.device("cpu"))
        seen = attack(obs)
        assert ((seen - obs).abs() <= 0.05 * observation_scale("CartPole-v1") + 1e-6).all()
        changed[method] = (seen[idle] != obs[idle]).any(1).float().mean().item()
    assert changed["pgd"] > 0.95 and changed["pgd-worst"] == 0.0
    assert 0.4 < changed["pgd-mix"] < 0.6, "half the observations get pgd, the other half pgd-worst"


def test_agents_with_equal_labels_get_the_options_that_tell_them_apart():
    from rlab.rl.attack_bench import agent_labels

    plain = {"algo": "ppo", "adv_obs": "none", "hidden": [64, 64], "gamma": 0.98, "seed": 0}
    control = {**plain, "hidden": [128, 128], "gamma": 0.995}
    defended = {**control, "adv_obs": "pgd-worst", "adv_eps": 0.0175}
    labels = agent_labels([plain, control, defended], ["runs/a", "runs/b", "runs/c"])
    assert len(set(labels)) == 3
    assert labels[0] == "ppo (hidden [64, 64], gamma 0.98)" and labels[1] == "ppo (hidden [128, 128], gamma 0.995)"
    # an option only newer runs record (absent from older config.json) does not label
    assert "adv_frac" not in agent_labels([plain, {**control, "adv_frac": 1.0}], ["runs/a", "runs/b"])[1]
    assert labels[2] == "ppo (adv-obs pgd-worst eps 0.0175)"
    # identical options: the run folders tell them apart
    assert agent_labels([plain, dict(plain)], ["runs/x__1", "runs/y__2"]) == ["ppo (x__1)", "ppo (y__2)"]


def test_adversaries_option_needs_the_learned_attack_and_a_folder(tmp_path):
    with pytest.raises(UserError, match="--adversaries is read only by --methods learned"):
        RLAttackConfig(run_dir="x", adversaries=str(tmp_path))
    with pytest.raises(UserError, match="--adversaries must be the folder"):
        RLAttackConfig(run_dir="x", methods=["none", "learned"], adversaries=str(tmp_path / "missing"))
    assert RLAttackConfig(run_dir="x", methods=["learned"], adversaries=str(tmp_path)).adversaries == str(tmp_path)


@pytest.mark.parametrize("options, message", [
    (dict(methods=["none", "pgd"], plan_horizon=0), "--plan-horizon configures --methods planning"),
    (dict(methods=["none"], plan_depth=5), "--plan-depth configures --methods planning"),
    (dict(methods=["none", "planning"], learned_steps=1024), "--learned-steps configures --methods learned"),
    (dict(methods=["learned"], learned_shaping=False, adversaries="."), "--adversaries replays saved ones"),
])
def test_options_of_a_method_that_does_not_run_are_refused(options, message):
    with pytest.raises(UserError, match=message):
        RLAttackConfig(run_dir="x", **options)
    RLAttackConfig(run_dir="x", **{**options, "methods": ["planning", "learned"], "adversaries": ""})
