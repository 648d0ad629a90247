"""DQN end to end: its target against hand computation, learning CartPole on a small budget, the off-policy
state through a checkpoint and --resume, the observation-attack bench on a Q-network, refusals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlab.cli import main
from rlab.demo import LADDER
from rlab.rl.algos.dqn import DQN, DQNOptions, dqn_target
from rlab.rl.environments import make_envs
from rlab.rl.offpolicy import OffPolicyLearner
from rlab.rl.replay import ReplayBatch
from rlab.runs import load_checkpoint, save_checkpoint

DEMO_DQN = dict(LADDER)["DQN (5k steps)"]

# the demo's DQN rung: learns CartPole in 5k steps (~5 s) with a Polyak target and one gradient step per env step
FAST = ["train", *(arg for name, value in DEMO_DQN.items() if name != "algo"
                   for arg in (f"--{name.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, list)
                               else str(value))),
        "--algo", "dqn", "--env", "CartPole-v1", "--eval-episodes", "10", "--no-progress", "--device", "cpu",
        "--threads", "1"]

def _run(capsys, *argv: str) -> Path:
    assert main(list(argv)) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_dqn_target_plain_and_double_by_hand():
    returns, discounts = torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.0])
    next_q_target = torch.tensor([[2.0, 5.0], [3.0, 1.0]])
    next_q_online = torch.tensor([[4.0, 1.0], [0.0, 7.0]])
    # plain: max of the target net, 1 + 0.9 * 5; double: the online net picks a* = 0, the target net says 2
    assert dqn_target(returns, discounts, next_q_target).tolist() == pytest.approx([5.5, 0.5])
    assert dqn_target(returns, discounts, next_q_target, next_q_online).tolist() == pytest.approx([2.8, 0.5])


@pytest.mark.parametrize("double,weights,loss,td", [
    (False, [1.0, 1.0], (1.0 + 0.125) / 2, [-1.5, 0.5]),   # y = [1 + .9 max(2, 5), .5], Q(s, a) = [4, 1]
    (True, [1.0, 1.0], (0.7 + 0.125) / 2, [1.2, 0.5]),     # y = [1 + .9 Q'(s', argmax Q(s', .) = 0) = 2.8, .5]
    (False, [0.5, 1.0], (0.5 * 1.0 + 0.125) / 2, [-1.5, 0.5]),  # importance weights scale each Huber term
])
def test_dqn_update_on_a_fixed_batch(double, weights, loss, td):
    """Q-networks whose output is a constant per action (last layer's weight 0): online [4, 1], target [2, 5]."""
    o = DQNOptions(hidden=[3], double=double, max_grad_norm=0.0)
    core = DQN(o, gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2), torch.device("cpu"), torch.Generator())
    with torch.no_grad():
        for net, bias in ((core.agent, [4.0, 1.0]), (core.target, [2.0, 5.0])):
            net.q_net[-1].weight.zero_()
            net.q_net[-1].bias.copy_(torch.tensor(bias))
    batch = ReplayBatch(obs=torch.randn(2, 2), actions=torch.tensor([0, 1]), returns=torch.tensor([1.0, 0.5]),
                        discounts=torch.tensor([0.9, 0.0]), next_obs=torch.randn(2, 2),
                        weights=torch.tensor(weights), indices=torch.arange(2))
    losses, td_error = core.update(batch, 2)
    assert losses["losses/td"].item() == pytest.approx(loss)
    assert td_error.tolist() == pytest.approx(td)
    assert core.agent.q_net[-1].bias.tolist() != [4.0, 1.0]  # the update stepped the online net
    assert core.target.q_net[-1].bias.tolist() == [2.0, 5.0]  # and left the target alone


def test_dueling_heads_combine_v_and_centred_a():
    from rlab.rl.policies import QNetwork

    torch.manual_seed(0)
    net = QNetwork(3, 4, (8,), dueling=True)
    obs = torch.randn(5, 3)
    h = net.trunk(obs)
    q = net.q(obs)
    assert torch.allclose(q.mean(-1, keepdim=True), net.value(h), atol=1e-6)  # mean_a Q = V
    assert torch.allclose(q - q.mean(-1, keepdim=True), net.advantage(h) - net.advantage(h).mean(-1, keepdim=True),
                          atol=1e-6)


@pytest.fixture(scope="module")
def cartpole_dqn(tmp_path_factory):
    """One DQN run on CartPole (FAST budget), shared by the learning, eval and attack tests."""
    import rlab.runs

    root = tmp_path_factory.mktemp("runs")
    old = rlab.runs.RUNS_ROOT
    rlab.runs.RUNS_ROOT = root
    try:
        assert main(FAST) == 0
    finally:
        rlab.runs.RUNS_ROOT = old
    (run,) = (root / "rl").iterdir()
    return run


@pytest.mark.xdist_group("dqn-cartpole")  # one worker trains the shared agent (under pytest-xdist)
def test_dqn_learns_cartpole_far_above_random(cartpole_dqn):
    summary = json.loads((cartpole_dqn / "summary.json").read_text())
    assert summary["env_steps"] == 5000
    # a random policy averages ~22; a DQN with a broken target, loss or exploration stays far below 100
    assert summary["eval/mean_return"] >= 100, summary
    rows = _rows(cartpole_dqn)
    assert float(rows[-1]["charts/epsilon"]) == pytest.approx(0.02)
    assert int(float(rows[-1]["charts/gradient_steps"])) == (5000 - 496) // 16 * 16  # bursts after learning_starts
    assert {"losses/td", "losses/q_values", "charts/buffer_size"} <= set(rows[-1])


@pytest.mark.xdist_group("dqn-cartpole")  # one worker trains the shared agent (under pytest-xdist)
def test_rl_attack_bench_and_eval_run_on_a_dqn_agent(cartpole_dqn, runs_root, capsys):
    bench = _run(capsys, "bench", "rl-attack", str(cartpole_dqn), "--eps", "0,0.05", "--episodes", "3",
                 "--methods", "none,fgsm,pgd", "--pgd-steps", "3", "--device", "cpu")
    with open(bench / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], float(r["eps"])) for r in rows} >= {("none", 0.0), ("fgsm", 0.05), ("pgd", 0.05)}
    assert (bench / "return_vs_eps.png").is_file()
    assert main(["eval", str(cartpole_dqn), "--episodes", "2", "--device", "cpu"]) == 0


TINY = ["train", "--algo", "dqn", "--env", "CartPole-v1", "--steps", "1200", "--hidden", "16", "--batch-size", "16",
        "--buffer-size", "500", "--learning-starts", "200", "--train-freq", "8", "--gradient-steps", "2",
        "--target-update-interval", "50", "--log-every", "200", "--checkpoint-every", "400", "--eval-episodes", "2",
        "--no-progress", "--device", "cpu", "--threads", "1", "--seed", "3"]


def test_off_policy_state_round_trips_through_a_checkpoint(tmp_path):
    """Two learners built with different seeds, given the same checkpoint and the same fresh env seed, continue
    identically: every piece of state (Q, target, Adam, buffer and its sampler, exploration RNG, counters) came
    from the checkpoint, none from the constructor."""
    o = DQNOptions(steps=1200, hidden=[16], batch_size=16, buffer_size=300, learning_starts=200, train_freq=8,
                   gradient_steps=2, target_update_interval=70, log_every=200, n_step=3, prioritized=True,
                   double=True, dueling=True)

    def learner(seed):
        return OffPolicyLearner(o, make_envs("CartPole-v1", 2), torch.device("cpu"), seed, DQN)

    a = learner(0)
    a.start(seed=0)
    for _ in range(3):
        a.iterate(1.0)
    save_checkpoint(tmp_path / "c.pt", {"learner": a.state_dict()})
    state = load_checkpoint(tmp_path / "c.pt")["learner"]  # weights_only=True
    assert state["env_steps"] == 600 and state["gradient_steps"] == (600 - 200) // 8 * 2 - 2
    assert state["pending_updates"] == 2  # the phase due at step 600 runs before the next env step
    assert not torch.equal(state["core"]["target"]["trunk.0.weight"], state["agent"]["trunk.0.weight"])

    rows = []
    for seed in (1, 2):
        b = learner(seed)
        b.load_state_dict(load_checkpoint(tmp_path / "c.pt")["learner"])  # its own copy: Adam keeps the tensors
        b.start(seed=7)
        its = [b.iterate(1.0) for _ in range(3)]
        rows.append(([it.losses for it in its], [it.episode_returns for it in its], b.state_dict()))
        b.close()
    (loss1, ret1, sd1), (loss2, ret2, sd2) = rows
    assert loss1 == loss2 and ret1 == ret2
    for key in ("agent",):
        assert all(torch.equal(sd1[key][k], sd2[key][k]) for k in sd1[key])
    assert np.array_equal(sd1["buffer"]["obs"].numpy(), sd2["buffer"]["obs"].numpy())
    a.close()


def test_resume_continues_the_off_policy_schedule(runs_root, capsys):
    """A run stopped at 600 steps and resumed to 1200 matches the uninterrupted run where the envs do not enter:
    rows up to the checkpoint, then epsilon, gradient steps and buffer size (the target network, buffer and
    counters came back); the resumed envs start fresh episodes, so returns after it differ."""
    from rlab.config import make_config
    from rlab.rl.trainer import TrainConfig, train

    whole = _run(capsys, *TINY)
    args = dict(algo="dqn", env="CartPole-v1", steps=1200, hidden=[16], batch_size=16, buffer_size=500,
                learning_starts=200, train_freq=8, gradient_steps=2, target_update_interval=50, log_every=200,
                checkpoint_every=400, eval_episodes=2, progress=False, device="cpu", threads=1, seed=3)
    stopped = Path(train(make_config(TrainConfig, **args), lambda steps, secs, agent: steps >= 600))
    checkpoint = load_checkpoint(stopped / "checkpoints" / "last.pt")["learner"]
    assert checkpoint["env_steps"] == 600 and checkpoint["buffer"]["filled"].sum() > 400
    copy = stopped.parent / "copy"
    shutil.copytree(stopped, copy)
    for run in (stopped, copy):
        assert main(["train", "--resume", str(run), "--steps", "1200", "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    a, b, c = _rows(whole), _rows(stopped), _rows(copy)
    assert [int(r["step"]) for r in b] == [200, 400, 600, 800, 1000, 1200]
    wall = {"charts/sps", "time/train_seconds"}

    def strip(rows, keys=None):
        return [{k: v for k, v in r.items() if k not in wall and (keys is None or k in keys)} for r in rows]

    assert strip(a[:3]) == strip(b[:3])
    assert strip(b) == strip(c)  # a resume is deterministic
    schedule = {"step", "charts/epsilon", "charts/gradient_steps"}
    assert strip(a, schedule) == strip(b, schedule)
    sizes = [(float(x["charts/buffer_size"]), float(y["charts/buffer_size"])) for x, y in zip(a, b)]
    assert all(abs(x - y) <= 10 for x, y in sizes) and sizes[-1][1] > 500 / 2
    assert json.loads((stopped / "summary.json").read_text())["env_steps"] == 1200


@pytest.mark.parametrize("argv,fragment", [
    (["--algo", "dqn", "--per-alpha", "0.5"], "give --prioritized too"),
    (["--algo", "dqn", "--tau", "0"], "--tau must be in (0, 1]"),
    (["--algo", "dqn", "--n-step", "0"], "--n-step must be >= 1"),
    (["--algo", "dqn", "--env", "Pendulum-v1"], "Discrete action space"),
    (["--algo", "ppo", "--double"], "--double is not an option of --algo ppo"),
    (["--algo", "qlearning", "--lr", "0.1"], "--lr is not an option of --algo qlearning"),
    (["--algo", "qlearning", "--env", "CartPole-v1"], "tabular methods need Discrete observations"),
])
def test_value_based_user_errors(runs_root, capsys, argv, fragment):
    assert main(["train", *argv, "--steps", "100", "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


@pytest.mark.parametrize("double", [False, True])
def test_one_call_over_several_minibatches_equals_one_call_per_minibatch(double):
    """The targets of a whole update phase come from one forward of the target network: the same steps as SB3's
    one-minibatch-at-a-time loop."""
    space, actions = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    torch.manual_seed(0)
    a = DQN(DQNOptions(hidden=[8], double=double), space, actions, torch.device("cpu"), torch.Generator())
    b = DQN(DQNOptions(hidden=[8], double=double), space, actions, torch.device("cpu"), torch.Generator())
    b.agent.load_state_dict(a.agent.state_dict())
    b.target.load_state_dict(a.target.state_dict())
    g = torch.Generator().manual_seed(1)
    batch = ReplayBatch(obs=torch.randn(12, 3, generator=g), actions=torch.randint(2, (12,), generator=g),
                        returns=torch.randn(12, generator=g), discounts=torch.rand(12, generator=g),
                        next_obs=torch.randn(12, 3, generator=g), weights=torch.ones(12), indices=torch.arange(12))
    losses, td = a.update(batch, 4)
    one_by_one = [b.update(batch[i:i + 4], 4) for i in (0, 4, 8)]
    assert torch.allclose(td, torch.cat([t for _, t in one_by_one]), atol=1e-6)
    assert losses["losses/td"].item() == pytest.approx(sum(x["losses/td"].item() for x, _ in one_by_one), rel=1e-5)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.agent.parameters(), b.agent.parameters()))
