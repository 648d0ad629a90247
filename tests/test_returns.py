"""The returns math against brute-force loops over random vectorised episodes.

Random rollouts are laid out the way a Gymnasium 1.x vector env returns them in
next-step autoreset mode: after an episode ends (terminated or truncated) the
env spends one reset step (reward 0, action ignored) before the next episode.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlab.rl import returns as R


@st.composite
def rollouts(draw):
    """(T, N) rewards/terminated/truncated/values + the per-env list of episodes."""
    T = draw(st.integers(2, 12))
    N = draw(st.integers(1, 3))
    first_is_reset = torch.tensor([draw(st.booleans()) for _ in range(N)])
    rewards = torch.zeros(T, N, dtype=torch.float64)
    terminated = torch.zeros(T, N, dtype=torch.bool)
    truncated = torch.zeros(T, N, dtype=torch.bool)
    real = torch.zeros(T, N, dtype=torch.bool)
    episodes = []  # (env, [steps], kind) with kind in terminated / truncated / ongoing
    for n in range(N):
        t = 1 if first_is_reset[n] else 0
        while t < T:
            length = draw(st.integers(1, 6))
            kind = draw(st.sampled_from(["terminated", "truncated"]))
            steps = list(range(t, min(t + length, T)))
            if t + length > T:
                kind = "ongoing"
            for s in steps:
                real[s, n] = True
                rewards[s, n] = draw(st.floats(-5, 5, allow_nan=False, width=32))
            if kind != "ongoing":
                (terminated if kind == "terminated" else truncated)[steps[-1], n] = True
            episodes.append((n, steps, kind))
            t = steps[-1] + 2  # one reset step after an episode end
    values = torch.tensor(draw(st.lists(st.floats(-5, 5, width=32), min_size=T * N, max_size=T * N)),
                          dtype=torch.float64).reshape(T, N)
    last_value = torch.tensor(draw(st.lists(st.floats(-5, 5, width=32), min_size=N, max_size=N)), dtype=torch.float64)
    gamma = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
    return dict(rewards=rewards, terminated=terminated, truncated=truncated, values=values, last_value=last_value,
                first_is_reset=first_is_reset, real=real, episodes=episodes, gamma=gamma)


def _next_value(r, n, s):
    """V(s_{s+1}) of env n: the observation after step s (the final one if the episode ended)."""
    return r["values"][s + 1, n].item() if s + 1 < r["values"].shape[0] else r["last_value"][n].item()


def _brute_discounted(r, gamma):
    out = {}
    for n, steps, kind in r["episodes"]:
        end = steps[-1]
        for t in steps:
            g = sum(gamma ** (k - t) * r["rewards"][k, n].item() for k in range(t, end + 1))
            if kind != "terminated":
                g += gamma ** (end - t + 1) * _next_value(r, n, end)
            out[(t, n)] = g
    return out


def _brute_gae(r, gamma, lam):
    out = {}
    for n, steps, kind in r["episodes"]:
        end = steps[-1]

        def delta(k):
            boot = 0.0 if (k == end and kind == "terminated") else _next_value(r, n, k)
            return r["rewards"][k, n].item() + gamma * boot - r["values"][k, n].item()

        for t in steps:
            out[(t, n)] = sum((gamma * lam) ** (k - t) * delta(k) for k in range(t, end + 1))
    return out


def _brute_n_step(r, gamma, n_steps):
    out = {}
    for n, steps, kind in r["episodes"]:
        end = steps[-1]
        for t in steps:
            m = min(n_steps, end - t + 1)
            g = sum(gamma**k * r["rewards"][t + k, n].item() for k in range(m))
            last = t + m - 1
            if not (last == end and kind == "terminated"):
                g += gamma**m * _next_value(r, n, last)
            out[(t, n)] = g
    return out


def _assert_matches(result, expected):
    assert expected, "a rollout always holds at least one real step"
    for (t, n), want in expected.items():
        assert result[t, n].item() == pytest.approx(want, rel=1e-9, abs=1e-9), (t, n)


def _next_values(r):
    return R.next_state_values(r["values"], r["last_value"])


@settings(max_examples=150, deadline=None)
@given(rollouts())
def test_discounted_returns_match_brute_force(r):
    g = R.discounted_returns(r["rewards"], r["terminated"], r["truncated"], _next_values(r), r["gamma"])
    _assert_matches(g, _brute_discounted(r, r["gamma"]))


@settings(max_examples=100, deadline=None)
@given(rollouts())
def test_reward_to_go_is_undiscounted_sum(r):
    g = R.reward_to_go(r["rewards"], r["terminated"], r["truncated"], _next_values(r))
    _assert_matches(g, _brute_discounted(r, 1.0))


@settings(max_examples=150, deadline=None)
@given(rollouts(), st.sampled_from([0.0, 0.5, 0.95, 1.0]))
def test_gae_matches_brute_force(r, lam):
    adv, ret = R.gae_advantages(r["rewards"], r["values"], r["terminated"], r["truncated"], _next_values(r),
                                r["gamma"], lam)
    expected = _brute_gae(r, r["gamma"], lam)
    _assert_matches(adv, expected)
    _assert_matches(ret, {k: v + r["values"][k].item() for k, v in expected.items()})


@settings(max_examples=150, deadline=None)
@given(rollouts(), st.integers(1, 7))
def test_n_step_returns_match_brute_force(r, n_steps):
    g = R.n_step_returns(r["rewards"], r["terminated"], r["truncated"], _next_values(r), r["gamma"], n_steps)
    _assert_matches(g, _brute_n_step(r, r["gamma"], n_steps))


@settings(max_examples=60, deadline=None)
@given(rollouts())
def test_limits_agree(r):
    """GAE(lambda=1) + V = bootstrapped MC return; GAE(0) + V = TD target = 1-step return."""
    nv = _next_values(r)
    real = r["real"]
    mc = R.discounted_returns(r["rewards"], r["terminated"], r["truncated"], nv, r["gamma"])
    _, ret1 = R.gae_advantages(r["rewards"], r["values"], r["terminated"], r["truncated"], nv, r["gamma"], 1.0)
    _, ret0 = R.gae_advantages(r["rewards"], r["values"], r["terminated"], r["truncated"], nv, r["gamma"], 0.0)
    td = R.td_target(r["rewards"], r["terminated"], nv, r["gamma"])
    one = R.n_step_returns(r["rewards"], r["terminated"], r["truncated"], nv, r["gamma"], 1)
    assert torch.allclose(ret1[real], mc[real], atol=1e-9)
    assert torch.allclose(ret0[real], td[real], atol=1e-9)
    assert torch.allclose(one[real], td[real], atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(rollouts())
def test_masks_mark_reset_steps_and_unfinished_tails(r):
    valid = R.valid_step_mask(r["first_is_reset"], r["terminated"], r["truncated"])
    assert torch.equal(valid, r["real"])
    finished = R.finished_episode_mask(r["terminated"], r["truncated"])
    for n, steps, kind in r["episodes"]:
        for t in steps:
            assert bool(finished[t, n]) == (kind != "ongoing")


def test_termination_does_not_bootstrap_but_truncation_does():
    rewards = torch.tensor([[1.0, 1.0]])
    nv = torch.tensor([[10.0, 10.0]])
    terminated = torch.tensor([[True, False]])
    truncated = torch.tensor([[False, True]])
    g = R.discounted_returns(rewards, terminated, truncated, nv, 0.5)
    assert g.tolist() == [[1.0, 6.0]]
    assert R.td_target(rewards, terminated, nv, 0.5).tolist() == [[1.0, 6.0]]


def test_hand_computed_discounted_returns():
    # one env, episode of three steps that terminates: G = [1 + .5*2 + .25*3, 2 + .5*3, 3]
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    terminated = torch.tensor([[False], [False], [True]])
    g = R.discounted_returns(rewards, terminated, torch.zeros_like(terminated), torch.full((3, 1), 99.0), 0.5)
    assert g.squeeze(1).tolist() == [2.75, 3.5, 3.0]
    assert R.immediate_rewards(rewards).squeeze(1).tolist() == [1.0, 2.0, 3.0]


def test_baselines():
    g = torch.tensor([[1.0, 3.0], [5.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert R.subtract_baseline(g, "none").tolist() == g.tolist()
    assert R.subtract_baseline(g, "mean", mask=mask)[mask].tolist() == [-2.0, 0.0, 2.0]
    z = R.subtract_baseline(g, "standardize", mask=mask)[mask]
    assert z.mean().item() == pytest.approx(0.0, abs=1e-6) and z.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)
    v = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    assert R.subtract_baseline(g, "value", values=v).tolist() == [[0.5, 2.5], [4.0, 99.0]]


def test_bad_input_is_refused_with_a_message():
    x = torch.zeros(3, 2)
    b = torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="gamma"):
        R.discounted_returns(x, b, b, x, 1.5)
    with pytest.raises(ValueError, match="one shape"):
        R.discounted_returns(x, b, b, torch.zeros(2, 2), 0.9)
    with pytest.raises(ValueError, match="allowed"):
        R.subtract_baseline(x, "median")
    with pytest.raises(ValueError, match="critic"):
        R.subtract_baseline(x, "value")
    with pytest.raises(ValueError, match="positive integer"):
        R.n_step_returns(x, b, b, x, 0.9, 0)


# ----------------------------------------------------------------------------- n-step windows of a replay buffer


@st.composite
def windows(draw):
    """(B, n) windows of replayed transitions: rewards, terminated, ended (terminated, truncated or newest step)."""
    B, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rewards = torch.tensor(draw(st.lists(st.floats(-5, 5, width=32), min_size=B * n, max_size=B * n)),
                           dtype=torch.float64).reshape(B, n)
    kinds = draw(st.lists(st.sampled_from(["", "", "", "terminated", "truncated", "newest"]), min_size=B * n,
                          max_size=B * n))
    terminated = torch.tensor([k == "terminated" for k in kinds]).reshape(B, n)
    ended = torch.tensor([k != "" for k in kinds]).reshape(B, n)
    return rewards, terminated, ended, draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))


@settings(max_examples=200, deadline=None)
@given(windows())
def test_n_step_window_matches_brute_force(w):
    rewards, terminated, ended, gamma = w
    g, discount, last = R.n_step_window(rewards, terminated, ended, gamma)
    for b in range(rewards.shape[0]):
        total, k = 0.0, 0
        while True:  # walk the window the slow way: add rewards until it stops
            total += gamma**k * rewards[b, k].item()
            if ended[b, k] or terminated[b, k] or k == rewards.shape[1] - 1:
                break
            k += 1
        assert last[b].item() == k
        assert g[b].item() == pytest.approx(total, abs=1e-9)
        assert discount[b].item() == pytest.approx(0.0 if terminated[b, k] else gamma ** (k + 1), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(rollouts(), st.integers(1, 7))
def test_n_step_window_agrees_with_n_step_returns_on_a_rollout(r, n_steps):
    """Each real step t of a rollout, as a replayed window t..t+n-1: G + discount * V(s_{t+m}) = G^(n)_t."""
    nv = _next_values(r)
    expected = R.n_step_returns(r["rewards"], r["terminated"], r["truncated"], nv, r["gamma"], n_steps)
    T = r["rewards"].shape[0]
    for n, steps, _ in r["episodes"]:
        for t in steps:
            idx = torch.arange(t, t + n_steps).clamp(max=T - 1)
            ended = (r["terminated"] | r["truncated"])[idx, n].clone()
            ended[idx == T - 1] = True  # the rollout's last step is the newest one stored
            g, discount, last = R.n_step_window(r["rewards"][idx, n][None], r["terminated"][idx, n][None], ended[None],
                                                r["gamma"])
            got = g[0] + discount[0] * nv[t + last[0], n]
            assert got.item() == pytest.approx(expected[t, n].item(), abs=1e-9)


def test_n_step_window_hand_computed():
    # gamma 0.5; row 0: three rewards, no end -> 1 + 0.5*2 + 0.25*4, discount 0.125
    # row 1: terminates at k=1 -> 1 + 0.5*2, discount 0; row 2: truncated at k=0 -> 1, discount 0.5
    rewards = torch.tensor([[1.0, 2.0, 4.0]] * 3)
    terminated = torch.tensor([[False, False, False], [False, True, False], [False, False, False]])
    ended = torch.tensor([[False, False, False], [False, True, False], [True, False, False]])
    g, discount, last = R.n_step_window(rewards, terminated, ended, 0.5)
    assert g.tolist() == [3.0, 2.0, 1.0] and discount.tolist() == [0.125, 0.0, 0.5] and last.tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="one shape"):
        R.n_step_window(rewards, terminated[:, :2], ended, 0.5)


# ----------------------------------------------------------------------------- edges the brute force does not reach
# (found by mutation testing: bench/mutate.py)

SHAPED = {  # function -> its (T, N) tensor arguments, in order, and how to call it
    "discounted_returns": (("rewards", "terminated", "truncated", "next_values"),
                           lambda a: R.discounted_returns(*a, 0.9)),
    "td_target": (("rewards", "terminated", "next_values"), lambda a: R.td_target(*a, 0.9)),
    "n_step_returns": (("rewards", "terminated", "truncated", "next_values"),
                       lambda a: R.n_step_returns(*a, 0.9, 2)),
    "gae_advantages": (("rewards", "values", "terminated", "truncated", "next_values"),
                       lambda a: R.gae_advantages(*a, 0.9, 0.95)),
}


@pytest.mark.parametrize("function", sorted(SHAPED))
def test_every_tensor_argument_is_shape_checked(function):
    names, call = SHAPED[function]
    for bad in range(len(names)):
        args = [torch.zeros(3, 2, dtype=torch.bool if n in ("terminated", "truncated") else torch.float32)
                for n in names]
        args[bad] = args[bad][:2]
        with pytest.raises(ValueError, match=f"one shape.*{names[bad]}"):
            call(args)


def test_gae_of_a_one_step_rollout_and_its_lambda_check():
    r, v, nv = torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]])
    no = torch.tensor([[False]])
    adv, ret = R.gae_advantages(r, v, no, no, nv, 0.5, 0.9)
    assert adv.item() == 1.0 + 0.5 * 2.0 - 0.5 and ret.item() == 1.0 + 0.5 * 2.0
    with pytest.raises(ValueError, match="^lambda must be in"):
        R.gae_advantages(r, v, no, no, nv, 0.5, 1.5)
    with pytest.raises(ValueError, match=r"^gamma must be in \[0, 1\], got -0.5$"):
        R.gae_advantages(r, v, no, no, nv, -0.5, 0.9)


def test_baselines_without_a_mask_and_on_tiny_batches():
    g = torch.tensor([[1.0, 3.0], [5.0, 7.0]], dtype=torch.float64)
    assert R.subtract_baseline(g, "mean").tolist() == [[-3.0, -1.0], [1.0, 3.0]]  # the mean of all four: 4
    std = (5.0 ** 0.5)  # population std of 1, 3, 5, 7
    assert torch.allclose(R.subtract_baseline(g, "standardize"), (g - 4.0) / (std + 1e-8))
    one = torch.tensor([[True, False], [False, False]])
    assert R.subtract_baseline(g, "mean", mask=one)[0, 0].item() == 0.0  # one sample is its own mean
    assert R.subtract_baseline(g, "standardize", mask=one)[0, 0].item() == 0.0  # (x - x) / (0 + eps)
    two = torch.tensor([[True, True], [False, False]])
    assert R.subtract_baseline(g, "standardize", mask=two)[0].tolist() == pytest.approx([-1.0, 1.0])
    nothing = torch.zeros(2, 2, dtype=torch.bool)
    assert torch.equal(R.subtract_baseline(g, "standardize", mask=nothing), g)  # no statistics: left as is
    # eps keeps a near-constant batch finite: std 1e-8 and eps 1e-8 halve the standardised values
    flat = torch.tensor([[1.0, 1.0 + 2e-8]], dtype=torch.float64)
    assert R.subtract_baseline(flat, "standardize").tolist()[0] == pytest.approx([-0.5, 0.5], rel=1e-6)


def test_normalize_is_the_masked_standardisation_with_its_eps():
    x = torch.tensor([[1.0, 2.0], [4.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    z = R.normalize(x, mask, eps=0.5)
    sel = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert torch.allclose(z, (x - sel.mean()) / (sel.std(unbiased=False) + 0.5))
    assert torch.allclose(R.normalize(x[:1]), (x[:1] - 1.5) / (0.5 + 1e-8))


def test_baseline_messages_name_what_is_allowed():
    with pytest.raises(ValueError, match="^unknown baseline 'median'; allowed: none, mean, standardize, value$"):
        R.subtract_baseline(torch.zeros(2, 2), "median")
    with pytest.raises(ValueError, match=r"^baseline 'value' needs the critic's values V\(s_t\)$"):
        R.subtract_baseline(torch.zeros(2, 2), "value")
