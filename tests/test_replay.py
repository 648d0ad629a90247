"""The replay buffer: time-limit ends bootstrap, reset steps are never transitions, n-step windows against brute
force, prioritized sampling proportional to priority, and a state_dict that survives a weights-only checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlab.rl.algos.dqn import DQN, DQNOptions
from rlab.rl.offpolicy import OffPolicyLearner
from rlab.rl.environments import make_envs
from rlab.rl.replay import ReplayBuffer, SumTree
from rlab.runs import load_checkpoint, save_checkpoint


def _fill(buffer: ReplayBuffer, steps: list[list[tuple]]) -> None:
    """steps[t][e] = (obs, reward, terminated, truncated, valid): one vector step of scalar observations."""
    for row in steps:
        obs = np.array([[o] for o, *_ in row], dtype=np.float32)
        buffer.add(obs, obs + 0.5, np.arange(len(row)), np.array([r for _, r, *_ in row]),
                   np.array([t for *_, t, _, _ in row]), np.array([t for *_, t, _ in row]),
                   np.array([v for *_, v in row]))


def test_time_limit_ends_bootstrap_and_reset_steps_are_dropped():
    """A real env (CartPole cut at 5 steps, next-step autoreset) through the learner with no updates."""
    o = DQNOptions(steps=60, learning_starts=10**6, buffer_size=1000, n_envs=2, log_every=60, hidden=[8])
    envs = make_envs("CartPole-v1", 2, max_episode_steps=5)
    learner = OffPolicyLearner(o, envs, torch.device("cpu"), 0, DQN)
    learner.start(seed=0)
    it = learner.iterate(1.0)
    buf = learner.buffer
    # 30 vector steps of 2 envs: episodes of 5 real steps each followed by one reset step
    assert it.episode_lengths and set(it.episode_lengths) == {5}
    assert len(buf) == 2 * 25 and list(buf.filled) == [25, 25]
    trunc, term = buf.truncated[:25], buf.terminated[:25]
    assert trunc.sum() == 10 and not term.any()
    for e in range(2):
        for s in range(24):
            if trunc[s, e]:  # the stored next obs is the final state, and the next transition starts afresh
                assert not np.allclose(buf.next_obs[s, e], buf.obs[s + 1, e])
            else:
                assert np.allclose(buf.next_obs[s, e], buf.obs[s + 1, e])
    batch = buf._batch(np.arange(25), np.zeros(25, dtype=np.int64), torch.ones(25))
    assert torch.allclose(batch.discounts[torch.from_numpy(trunc[:, 0])], torch.tensor(o.gamma))
    envs.close()


def _brute_force_targets(transitions, n, gamma):
    """transitions of one env in order: (reward, terminated, truncated); the window stops at episode ends and the
    newest transition. Returns [(G, discount, last offset)] per start."""
    out = []
    for t in range(len(transitions)):
        g, k = 0.0, 0
        while True:
            r, term, trunc = transitions[t + k]
            g += gamma**k * r
            if term or trunc or k == n - 1 or t + k == len(transitions) - 1:
                break
            k += 1
        out.append((g, 0.0 if transitions[t + k][1] else gamma ** (k + 1), k))
    return out


@pytest.mark.parametrize("n_step", [1, 3])
def test_n_step_windows_of_the_buffer_match_brute_force(n_step):
    rng = np.random.default_rng(n_step)
    gamma, n_envs, T = 0.9, 2, 40
    buffer = ReplayBuffer(2 * 16, n_envs, (1,), (), np.int64, gamma, n_step=n_step)  # 16 slots per env: wraps
    kept = [[] for _ in range(n_envs)]
    prev_done = np.zeros(n_envs, dtype=bool)
    for t in range(T):
        row = []
        for e in range(n_envs):
            end = rng.random() < 0.2 and not prev_done[e]
            term, trunc = (end and rng.random() < 0.5), False
            trunc = end and not term
            r = float(rng.integers(-3, 4))
            row.append((float(t), r, term, trunc, not prev_done[e]))
            if not prev_done[e]:
                kept[e].append((r, term, trunc, float(t)))
            prev_done[e] = term or trunc
        _fill(buffer, [row])
    for e in range(n_envs):
        last16 = kept[e][-16:]  # the column holds the 16 newest transitions of env e
        expected = _brute_force_targets([x[:3] for x in last16], n_step, gamma)
        slots = np.array([(buffer.pos[e] + i) % 16 for i in range(16)])  # oldest first
        batch = buffer._batch(slots, np.full(16, e), torch.ones(16))
        for i, (g, discount, k) in enumerate(expected):
            assert batch.obs[i, 0].item() == last16[i][3]
            assert batch.returns[i].item() == pytest.approx(g, abs=1e-5)
            assert batch.discounts[i].item() == pytest.approx(discount, abs=1e-6)
            assert batch.next_obs[i, 0].item() == last16[i + k][3] + 0.5


def test_uniform_sampling_covers_the_stored_transitions_only():
    buffer = ReplayBuffer(100, 2, (1,), (), np.int64, 0.99, seed=1)
    _fill(buffer, [[(1.0, 0, False, False, True), (2.0, 0, False, False, False)]] * 3)  # env 1: reset steps only
    batch = buffer.sample(200)
    assert set(batch.obs[:, 0].tolist()) == {1.0} and len(buffer) == 3
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(10, 1, (1,), (), np.int64, 0.99).sample(4)


def test_sum_tree_finds_prefixes_and_prioritized_sampling_is_proportional():
    tree = SumTree(5)
    tree.set(np.arange(5), np.array([1.0, 0.0, 3.0, 0.0, 4.0]))
    assert tree.total == 8.0
    assert tree.find(np.array([0.0, 0.99, 1.0, 3.99, 4.0, 7.99])).tolist() == [0, 0, 2, 2, 4, 4]
    tree.set(np.array([2, 2]), np.array([5.0, 2.0]))  # the last value wins
    assert tree.total == 7.0

    buffer = ReplayBuffer(4, 1, (1,), (), np.int64, 0.99, prioritized=True, alpha=1.0, priority_eps=0.0, seed=0)
    _fill(buffer, [[(float(i), 0, False, False, True)] for i in range(4)])
    buffer.update_priorities(torch.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    counts = np.zeros(4)
    for _ in range(200):
        batch = buffer.sample(10, beta=1.0)
        counts += np.bincount(batch.indices.numpy(), minlength=4)
        # w_i = (N P(i))^-1 / max w: the rarest sample gets weight 1
        p = np.array([1, 2, 3, 4])[batch.indices.numpy()] / 10
        assert np.allclose(batch.weights.numpy(), (1 / p) / (1 / p).max(), rtol=1e-5)
    assert np.allclose(counts / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.02)


def test_state_dict_survives_a_weights_only_checkpoint(tmp_path):
    buffer = ReplayBuffer(8, 2, (2,), (), np.int64, 0.99, n_step=2, prioritized=True, seed=4)
    rng = np.random.default_rng(0)
    for _ in range(6):
        buffer.add(rng.normal(size=(2, 2)).astype(np.float32), rng.normal(size=(2, 2)).astype(np.float32),
                   np.array([0, 1]), rng.normal(size=2), np.array([False, True]), np.array([False, False]),
                   np.array([True, True]))
    buffer.update_priorities(torch.tensor([0, 3]), torch.tensor([5.0, 0.1]))
    save_checkpoint(tmp_path / "b.pt", {"buffer": buffer.state_dict()})
    copy = ReplayBuffer(8, 2, (2,), (), np.int64, 0.99, n_step=2, prioritized=True, seed=99)
    copy.load_state_dict(load_checkpoint(tmp_path / "b.pt")["buffer"])
    for name in ReplayBuffer.FIELDS:
        assert np.array_equal(getattr(copy, name), getattr(buffer, name))
    a, b = buffer.sample(16, beta=0.5), copy.sample(16, beta=0.5)  # the sampler's RNG came back too
    assert torch.equal(a.indices, b.indices) and torch.equal(a.returns, b.returns) and torch.equal(a.weights, b.weights)
    with pytest.raises(ValueError, match="uniform"):
        ReplayBuffer(8, 2, (2,), (), np.int64, 0.99).load_state_dict(buffer.state_dict())
