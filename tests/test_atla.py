"""ATLA (rlab.rl.adversary.AlternatingAdversary, `rlab train --adv-obs atla`): an agent trained against a learned
adversary that is trained in rounds against it (Zhang et al., 2021)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from envs.observation_attacks import observation_scale
from rlab.cli import main
from rlab.rl import algos
from rlab.rl.adversary import AlternatingAdversary, load_adversary
from rlab.rl.environments import make_envs
from rlab.rl.trainer import TrainConfig, _observation_attack, resolve_with_sources
from rlab.runs import RunDir

EPS = 0.05
SCALE = observation_scale("CartPole-v1")
TINY = ["--env", "CartPole-v1", "--n-envs", "4", "--n-steps", "32", "--hidden", "16", "--no-progress",
        "--eval-episodes", "1", "--device", "cpu"]


def _adam_steps(optimizer_state: dict) -> float:
    """Adam's step count (the same for every parameter): how many director updates its moments have seen."""
    return float(next(iter(optimizer_state["state"].values()))["step"])


def _director_weights(atla: AlternatingAdversary) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in atla.director.parameters()])


def test_director_trains_on_in_rounds_against_the_agent_as_it_learns_inside_the_ball():
    torch.manual_seed(0)
    cfg, _ = resolve_with_sources(TrainConfig(env="CartPole-v1", adv_obs="atla", adv_eps=EPS, adv_frac=0.5,
                                              n_envs=4, n_steps=32, hidden=[16]))
    algorithm = algos.get("ppo")
    options = algorithm.options(**{n: getattr(cfg, n) for n in algorithm.option_names()})
    learner = algorithm.make_learner(options, make_envs("CartPole-v1", 4), torch.device("cpu"), 0)
    atla = AlternatingAdversary(learner.agent, "CartPole-v1", EPS, seed=0, pgd_steps=3, n_envs=4, n_steps=32)
    attack = _observation_attack(cfg, learner.agent, "cpu", atla)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recorded(obs):
        out = attack(obs)
        seen.append((obs.clone(), out.clone()))
        return out

    learner.start(0, recorded)
    atla.start(1)
    weights, adam_steps = [_director_weights(atla)], []
    for _ in range(3):
        agent_before = [p.detach().clone() for p in learner.agent.parameters()]
        for _ in range(2):
            learner.iterate(1.0)
        assert any(not torch.equal(a, p) for a, p in zip(agent_before, learner.agent.parameters())), "the agent trains"
        atla.train_round(128)
        weights.append(_director_weights(atla))
        adam_steps.append(_adam_steps(atla.learner.optimizer.state_dict()))
        for v, p in zip(atla.victim.parameters(), learner.agent.parameters()):
            assert torch.equal(v, p), "each round trains the director against the agent as it is now"
    for before, after in zip(weights, weights[1:]):
        assert not torch.equal(before, after), "every round trains the director further"
    assert adam_steps[1] == 2 * adam_steps[0] and adam_steps[2] == 3 * adam_steps[0] > 0, \
        "one director and one optimiser for the whole run, not a fresh one per round"
    assert atla.rounds == 3 and atla.steps_trained == 3 * 128
    clean = torch.cat([c for c, _ in seen])
    attacked = torch.cat([s for _, s in seen])
    assert ((attacked - clean).abs() <= EPS * SCALE + 1e-6).all(), "the agent trains inside the eps-ball"
    moved = (attacked != clean).any(-1).float().mean()
    assert 0.05 < moved < 0.5, f"about half the observations are attacked (adv_frac 0.5), of those the ones " \
                               f"whose target differs from the agent's action; moved {moved:.2f}"
    atla.close()
    learner.close()


def test_atla_run_keeps_its_adversary_in_the_checkpoint_resumes_and_saves_it_for_the_bench(runs_root, capsys):
    assert main(["train", "--adv-obs", "atla", "--adv-eps", str(EPS), "--steps", "512", "--atla-every", "2",
                 "--atla-steps", "256", "--checkpoint-every", "256", *TINY]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    first = RunDir.open(run).load_checkpoint()["adversary"]
    assert (first["rounds"], first["steps_trained"]) == (2, 2 * 512), "4 agent updates, a round every 2; " \
                                                                     "a round is whole director rollouts (16 x 32)"
    assert main(["train", "--resume", str(run), "--steps", "1024", "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    second = RunDir.open(run).load_checkpoint()["adversary"]
    assert (second["rounds"], second["steps_trained"]) == (4, 4 * 512)
    assert _adam_steps(second["director"]["optimizer"]) == 2 * _adam_steps(first["director"]["optimizer"]), \
        "the resumed run continues the director's optimiser from the checkpoint"
    assert main(["train", "--resume", str(run), "--atla-every", "3", "--no-progress"]) == 2
    assert "--atla-every would be ignored" in capsys.readouterr().err

    saved = run / "adversaries" / f"{run.name}__eps{EPS:g}.pt"
    policy = torch.nn.Linear(4, 2)
    adversary = load_adversary(saved, lambda obs: torch.distributions.Categorical(logits=policy(obs)), "CartPole-v1",
                               EPS)
    final = second["director"]["agent"]
    assert all(torch.equal(adversary.director.state_dict()[k], v) for k, v in final.items()), \
        "the saved adversary is the final director"
    assert adversary.trained["steps"] == 4 * 512 and adversary.trained["atla_rounds"] == 4
    assert main(["bench", "rl-attack", str(run), "--adversaries", str(run), "--eps", str(EPS), "--episodes", "1",
                 "--methods", "none,learned", "--device", "cpu"]) == 0
    bench = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert "learned" in (bench / "results.csv").read_text()
    assert not (bench / "adversaries").exists(), "the bench reused the run's adversary instead of training one"


@pytest.mark.parametrize("argv, fragment", [
    (["--adv-obs", "pgd", "--adv-eps", "0.05", "--atla-every", "4"],
     "--atla-every schedules the learned adversary of --adv-obs atla; it would be ignored with --adv-obs pgd"),
    (["--atla-steps", "512"], "--atla-steps schedules the learned adversary of --adv-obs atla"),
    (["--robust", "--adv-eps", "0.05", "--atla-every", "4"], "it would be ignored with --adv-obs none"),
    (["--adv-obs", "atla", "--adv-eps", "0.05", "--atla-every", "0"], "--atla-every must be >= 1, got 0"),
    (["--adv-obs", "atla"], "--adv-obs atla needs --adv-eps in (0, 1]"),
    (["--adv-obs", "atla", "--adv-eps", "0.05", "--env", "Pendulum-v1", "--steps", "64"],
     "--adv-obs atla: the learned adversary attacks discrete-action agents"),
])
def test_atla_options_are_refused_where_they_would_be_ignored_or_cannot_work(runs_root, capsys, argv, fragment):
    assert main(["train", "--no-progress", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err
    assert not (runs_root / "rl").exists(), "refused before a run folder exists"


def test_atla_schedule_defaults_are_resolved_and_saved_with_their_source():
    from rlab.rl.adversary import ATLA_EVERY, ATLA_STEPS

    cfg, sources = resolve_with_sources(TrainConfig(adv_obs="atla", adv_eps=EPS, atla_steps=1000))
    assert (cfg.atla_every, sources["atla_every"]) == (ATLA_EVERY, "atla default")
    assert (cfg.atla_steps, sources["atla_steps"]) == (1000, "command line")
    cfg, _ = resolve_with_sources(TrainConfig(robust=True, adv_eps=EPS, adv_obs="atla"))
    assert (cfg.algo, cfg.adv_obs, cfg.hidden, cfg.gamma) == ("ppo", "atla", [128, 128], 0.999), \
        "--robust --adv-obs atla is ATLA on the preset's network and discount"
    cfg, _ = resolve_with_sources(TrainConfig(robust=True, adv_eps=EPS, adv_obs="atla", algo="sa-ppo", kappa=1.0,
                                              adv_frac=0.75))
    assert (cfg.algo, cfg.adv_obs, cfg.sa_eps, cfg.adv_frac) == ("sa-ppo", "atla", cfg.adv_eps, 0.75), \
        "ATLA-PPO + SA-Reg: SA-PPO's ball is the training attack's"
