"""envs: the batched torch CartPole against Gymnasium's, step by step; observation attacks and wrappers."""

import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch.distributions import Categorical, Independent, Normal

import envs
from envs.cartpole import TorchCartPoleVectorEnv, cartpole_step

# A hand-made CartPole controller: push towards the side the pole falls to.
GAINS = torch.tensor([0.1, 0.5, 10.0, 2.0])


def linear_policy(obs: torch.Tensor) -> Categorical:
    score = obs @ GAINS
    return Categorical(logits=torch.stack((-score, score), -1))


def greedy(obs: np.ndarray) -> np.ndarray:
    return (obs.astype(np.float64) @ GAINS.double().numpy() > 0).astype(np.int64)


def greedy_rollout(env: gym.Env, steps: int):
    """Drive a wrapped CartPole with `greedy` on what it sees; yield (true state, observation seen) per step."""
    obs, _ = env.reset(seed=0)
    for _ in range(steps):
        yield env.unwrapped.state.astype(np.float32), obs
        obs, _, terminated, truncated, _ = env.step(int(greedy(obs[None])[0]))
        if terminated or truncated:
            obs, _ = env.reset()


def test_one_step_matches_gymnasium_from_the_same_states():
    rng = np.random.default_rng(0)
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    states = rng.uniform(-1, 1, (2000, 4)) * np.array([2.6, 3.0, 0.25, 4.0])
    actions = rng.integers(0, 2, 2000)
    forces = torch.from_numpy(np.where(actions == 1, 10.0, -10.0))
    next_states, terminated = cartpole_step(torch.from_numpy(states.T.copy()), forces)  # component-major (4, N)
    for s, a, ns, t in zip(states, actions, next_states.T.numpy(), terminated.numpy()):
        env.state = s.copy()
        env.steps_beyond_terminated = None
        obs, reward, term, trunc, _ = env.step(int(a))
        np.testing.assert_allclose(ns, env.state, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ns.astype(np.float32), obs, rtol=1e-6, atol=1e-7)
        assert bool(t) == term
    assert 0 < terminated.sum() < len(states), "the sample must cover both terminal and non-terminal steps"


@pytest.mark.parametrize("max_steps", [40, 500])
def test_vector_env_matches_gymnasium_sync_vector_env_step_by_step(max_steps):
    """Same states and actions as SyncVectorEnv(CartPole-v1): obs, reward, terminated, truncated, autoreset."""
    n = 6
    ours = TorchCartPoleVectorEnv(num_envs=n, max_episode_steps=max_steps)
    ref = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync", max_episode_steps=max_steps)
    obs, _ = ours.reset(seed=1)
    ref.reset(seed=1)
    for i in range(n):
        ref.envs[i].unwrapped.state = ours.state[:, i].numpy().copy()
    rng = np.random.default_rng(1)
    seen = {"terminated": 0, "truncated": 0, "autoreset": 0}
    for _ in range(1100 if max_steps == 500 else 300):
        explore = rng.random(n) < np.array([0.02] * 3 + [0.6] * 3)  # some envs balance, some fall
        actions = np.where(explore, rng.integers(0, 2, n), greedy(obs))
        obs, reward, terminated, truncated, _ = ours.step(actions)
        ref_obs, ref_reward, ref_terminated, ref_truncated, _ = ref.step(actions)
        resets = ref_reward == 0
        np.testing.assert_array_equal(reward, ref_reward.astype(np.float32))
        np.testing.assert_array_equal(terminated, ref_terminated)
        np.testing.assert_array_equal(truncated, ref_truncated)
        np.testing.assert_allclose(obs[~resets], ref_obs[~resets], rtol=1e-6, atol=1e-7)
        assert (np.abs(obs[resets]) <= 0.05).all()
        seen["terminated"] += terminated.sum()
        seen["truncated"] += truncated.sum()
        seen["autoreset"] += resets.sum()
        for i in range(n):  # step by step from the same states (float64 cos/sin may differ in the last bit)
            ref.envs[i].unwrapped.state = ours.state[:, i].numpy().copy()
    assert all(v > 0 for v in seen.values()), seen
    assert obs.dtype == np.float32 and reward.dtype == np.float32 and terminated.dtype == np.bool_


def test_registered_id_makes_the_batched_env_with_batched_spaces():
    env = gym.make_vec("rlab/TorchCartPole-v1", num_envs=5, vectorization_mode="vector_entry_point")
    assert isinstance(env.unwrapped, TorchCartPoleVectorEnv) and env.num_envs == 5
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert env.observation_space.shape == (5, 4) and env.single_observation_space.shape == (4,)
    assert env.single_action_space == gym.spaces.Discrete(2)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and info == {}
    obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert gym.spec("rlab/TorchCartPole-v1").max_episode_steps == 500


def test_same_seed_same_numbers_and_tensor_io():
    def rollout(**kw):
        env = TorchCartPoleVectorEnv(num_envs=8, max_episode_steps=20, **kw)
        out = [env.reset(seed=7)[0]]
        for t in range(60):
            out.append(env.step(np.full(8, t % 2))[0])
        return [torch.as_tensor(o) for o in out]

    a, b, c = rollout(), rollout(), rollout(tensors=True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(a, c))
    env = TorchCartPoleVectorEnv(num_envs=8, tensors=True)
    env.reset(seed=8)
    obs, reward, terminated, truncated, _ = env.step(torch.ones(8, dtype=torch.int64))
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.float32 and terminated.dtype == torch.bool
    assert not torch.equal(obs, a[1])


@pytest.mark.parametrize("bad", [np.array([0, 2, 1]), np.array([0.0, 1.0, 1.0]), np.array([0, 1])])
def test_invalid_actions_are_refused(bad):
    env = TorchCartPoleVectorEnv(num_envs=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="actions"):
        env.step(bad)


def test_invalid_construction_is_refused():
    with pytest.raises(ValueError, match="num_envs"):
        TorchCartPoleVectorEnv(num_envs=0)
    with pytest.raises(ValueError, match="dtype"):
        TorchCartPoleVectorEnv(dtype=torch.int32)


C_COMPILERS = ("g++", "c++", "clang++", "gcc", "cc")


@pytest.mark.slow  # torch.compile: ~11 s with Inductor's cache warm, ~22 s cold (loaded 2-core machine)
@pytest.mark.skipif(not any(shutil.which(c) for c in C_COMPILERS), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_step_equals_the_eager_step():
    n = 64
    compiled = TorchCartPoleVectorEnv(num_envs=n, max_episode_steps=40, compile=True)
    assert compiled.compiled and compiled.compile_seconds > 0, "a compiler is present, so compile=True must compile"
    eager = TorchCartPoleVectorEnv(num_envs=n, max_episode_steps=40)
    assert not eager.compiled
    obs_c, _ = compiled.reset(seed=5)
    obs_e, _ = eager.reset(seed=5)
    np.testing.assert_array_equal(obs_c, obs_e)
    rng = np.random.default_rng(5)
    worst, ends = 0.0, 0
    for _ in range(200):
        actions = rng.integers(0, 2, n)
        out_c, out_e = compiled.step(actions), eager.step(actions)
        for a, b in zip(out_c[1:4], out_e[1:4]):  # reward, terminated, truncated: exactly
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(out_c[0], out_e[0], rtol=1e-6, atol=1e-7)
        worst = max(worst, (compiled.state - eager.state).abs().max().item())
        ends += out_c[2].sum() + out_c[3].sum()
        eager.state = compiled.state.clone()  # step by step from the same states
    assert worst < 1e-12, worst
    assert ends > 0


def test_mask_resets_of_accelerators_equal_index_resets_on_cpu():
    """The GPU path (reset by torch.where over a full draw, never asking the device) run on CPU."""
    n = 32
    masked, indexed = (TorchCartPoleVectorEnv(num_envs=n, max_episode_steps=30) for _ in range(2))
    masked.resets_by_mask = True
    masked.reset(seed=2)
    indexed.reset(seed=2)
    rng = np.random.default_rng(2)
    resets = truncations = 0
    for _ in range(120):
        actions = rng.integers(0, 2, n)
        was_done = indexed.prev_done.numpy().copy()
        resets += was_done.sum()
        obs_m, *out_m, _ = masked.step(actions)
        obs_i, *out_i, _ = indexed.step(actions)
        for a, b in zip(out_m, out_i):  # reward, terminated, truncated
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(obs_m[~was_done], obs_i[~was_done])
        assert (np.abs(obs_m[was_done]) <= 0.05).all() and (out_m[0][was_done] == 0).all()
        truncations += out_i[2].sum()
        masked.state[:, was_done] = indexed.state[:, was_done]  # the two draw different fresh states
    assert resets > 0 and truncations > 0, (resets, truncations)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def no_compiler(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.warns(RuntimeWarning, match="stepping eagerly"):
        env = TorchCartPoleVectorEnv(num_envs=3, compile=True)
    assert not env.compiled
    env.reset(seed=0)
    obs, reward, *_ = env.step(np.ones(3, dtype=np.int64))
    assert obs.shape == (3, 4) and (reward == 1).all()


def test_observation_scale_uses_bounds_then_the_table():
    scale = envs.observation_scale("CartPole-v1")
    high = gym.make("CartPole-v1").observation_space.high
    assert scale[0] == pytest.approx(2 * high[0]) and scale[2] == pytest.approx(2 * high[2])
    assert scale[1] == envs.observation_attacks.TYPICAL_RANGES["CartPole"][1]
    assert torch.equal(envs.observation_scale("rlab/TorchCartPole-v1"), scale)
    assert torch.allclose(envs.observation_scale("Pendulum-v1"), torch.tensor([2.0, 2.0, 16.0]))


def rollout_observations(n: int = 600) -> torch.Tensor:
    env = TorchCartPoleVectorEnv(num_envs=n)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(15):
        obs, *_ = env.step(rng.integers(0, 2, n))
    return torch.from_numpy(obs)


def gaussian_policy():
    torch.manual_seed(0)
    mean = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    return mean, lambda o: Independent(Normal(mean(o), torch.full((2,), 0.5)), 1)


@pytest.mark.parametrize("method", ["random", "fgsm", "pgd"])
@pytest.mark.parametrize("eps", [0.0, 0.01, 0.2, 0.8])
def test_perturbations_stay_inside_the_scaled_ball(method, eps):
    obs = rollout_observations(200)
    scale = envs.observation_scale("CartPole-v1")
    mean, gauss = gaussian_policy()
    for policy in (linear_policy, gauss):
        x_adv = envs.perturb_observations(policy, obs, eps, method, scale)
        assert x_adv.shape == obs.shape and x_adv.dtype == obs.dtype and not x_adv.requires_grad
        assert ((x_adv - obs).abs() <= eps * scale * (1 + 1e-5) + 1e-7).all()
        if eps > 0:
            assert ((x_adv - obs).abs().amax(0) > 0.5 * eps * scale).all(), "the attack should use the ball"
    assert all(p.grad is None for p in mean.parameters()), "attacks must not touch parameter gradients"


def test_pgd_flips_more_actions_than_random_noise_of_the_same_size():
    obs = rollout_observations()
    scale = envs.observation_scale("CartPole-v1")
    clean = linear_policy(obs).logits.argmax(-1)

    def flipped(method):
        x = envs.perturb_observations(linear_policy, obs, 0.02, method, scale, generator=torch.Generator().manual_seed(0))
        return (linear_policy(x).logits.argmax(-1) != clean).float().mean().item()

    random_rate, fgsm_rate, pgd_rate = flipped("random"), flipped("fgsm"), flipped("pgd")
    assert pgd_rate > 0.2
    assert pgd_rate >= 3 * random_rate
    assert fgsm_rate > random_rate


def test_gaussian_attack_moves_the_mean_more_than_noise():
    obs = rollout_observations(300)
    scale = envs.observation_scale("CartPole-v1")
    mean, policy = gaussian_policy()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        shift = {m: (mean(envs.perturb_observations(policy, obs, 0.05, m, scale, generator=g)) - mean(obs)).norm(dim=1).mean()
                 for m in ("random", "pgd")}
    assert shift["pgd"] > 2 * shift["random"]


def test_perturb_observations_validates_its_arguments():
    obs = torch.zeros(3, 4)
    scale = envs.observation_scale("CartPole-v1")
    with pytest.raises(ValueError, match="allowed: none, random, fgsm, pgd"):
        envs.perturb_observations(linear_policy, obs, 0.1, "cw", scale)
    with pytest.raises(ValueError, match="eps"):
        envs.perturb_observations(linear_policy, obs, -0.1, "pgd", scale)
    with pytest.raises(ValueError, match="scale"):
        envs.perturb_observations(linear_policy, obs, 0.1, "pgd", scale[:3])
    assert torch.equal(envs.perturb_observations(linear_policy, obs + 1, 0.0, "pgd", scale), obs + 1)


@pytest.mark.filterwarnings("ignore")
def test_wrappers_pass_gymnasiums_env_checker():
    check_env(envs.AdversarialObservation(gym.make("CartPole-v1"), linear_policy, 0.05, "pgd"), skip_render_check=True)
    check_env(envs.AdversarialObservation(gym.make("CartPole-v1"), linear_policy, 0.05, "fgsm"), skip_render_check=True)
    check_env(envs.RandomObservationNoise(gym.make("CartPole-v1"), 0.05), skip_render_check=True)
    torch.manual_seed(0)
    mean = torch.nn.Linear(3, 1)
    check_env(envs.AdversarialObservation(gym.make("Pendulum-v1"), lambda o: Normal(mean(o), 1.0), 0.1, "pgd"),
              skip_render_check=True)


def test_wrapper_changes_the_agents_actions_and_stays_in_the_space():
    env = envs.AdversarialObservation(gym.make("CartPole-v1"), linear_policy, 0.02, "pgd")
    flips = 0
    for clean, obs in greedy_rollout(env, 100):
        assert env.observation_space.contains(obs)
        assert np.all(np.abs(obs - clean) <= 0.02 * envs.observation_scale("CartPole-v1").numpy() + 1e-6)
        flips += greedy(obs[None])[0] != greedy(clean[None])[0]
    assert flips > 20
    with pytest.raises(ValueError, match="method"):
        envs.AdversarialObservation(gym.make("CartPole-v1"), linear_policy, 0.02, "random")


def test_timed_pgd_attacks_only_where_the_agent_is_sure():
    obs = rollout_observations(300)
    scale = envs.observation_scale("CartPole-v1")
    sure = linear_policy(obs).probs.amax(-1) >= 0.8
    assert 0 < sure.sum() < len(obs)
    x_timed = envs.perturb_observations(linear_policy, obs, 0.05, "pgd-timed", scale, confidence=0.8)
    x_pgd = envs.perturb_observations(linear_policy, obs, 0.05, "pgd", scale, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_timed[~sure], obs[~sure])
    assert ((x_timed[sure] - obs[sure]).abs().amax(1) > 0).all()
    flipped = linear_policy(x_timed).logits.argmax(-1) != linear_policy(obs).logits.argmax(-1)
    assert not flipped[~sure].any() and flipped[sure].float().mean() > 0.1
    assert (linear_policy(x_pgd).logits.argmax(-1) != linear_policy(obs).logits.argmax(-1)).sum() >= flipped.sum()
    _, gauss = gaussian_policy()
    with pytest.raises(ValueError, match="Categorical"):
        envs.perturb_observations(gauss, obs, 0.05, "pgd-timed", scale)


def test_worst_action_pgd_steers_the_agent_onto_the_worst_action_and_leaves_the_rest():
    obs = rollout_observations(400)
    scale = envs.observation_scale("CartPole-v1")
    worst = envs.observation_attacks.worst_action_rule("rlab/TorchCartPole-v1")
    target = worst(obs)
    assert torch.equal(target, (obs[:, 2] < 0).long()), "CartPole's worst push is away from the pole's lean"
    clean = linear_policy(obs).logits.argmax(-1)
    already = clean == target
    assert 0 < already.sum() < len(obs)

    def on_target(method):
        x = envs.perturb_observations(linear_policy, obs, 0.02, method, scale, generator=torch.Generator().manual_seed(0),
                                      worst_action=worst)
        assert ((x - obs).abs() <= 0.02 * scale * (1 + 1e-5) + 1e-7).all()
        return x, (linear_policy(x).logits.argmax(-1) == target).float().mean().item()

    x_worst, worst_rate = on_target("pgd-worst")
    _, random_rate = on_target("random")
    _, pgd_rate = on_target("pgd")
    assert torch.equal(x_worst[already], obs[already]), "where the agent already errs, nothing is perturbed"
    assert worst_rate >= already.float().mean().item() + 0.1
    assert worst_rate > random_rate + 0.1
    assert worst_rate > pgd_rate, "untargeted flips also turn the agent's own errors into good pushes"


def test_worst_action_pgd_validates_its_inputs():
    obs = rollout_observations(50)
    scale = envs.observation_scale("CartPole-v1")
    with pytest.raises(ValueError, match="worst_action"):
        envs.perturb_observations(linear_policy, obs, 0.05, "pgd-worst", scale)
    with pytest.raises(ValueError, match="worst-action rule for Pendulum-v1.*CartPole"):
        envs.observation_attacks.worst_action_rule("Pendulum-v1")
    with pytest.raises(ValueError, match="one action per observation"):
        envs.perturb_observations(linear_policy, obs, 0.05, "pgd-worst", scale, worst_action=lambda o: torch.zeros(3))
    _, gauss = gaussian_policy()
    with pytest.raises(ValueError, match="Categorical"):
        envs.perturb_observations(gauss, obs, 0.05, "pgd-worst", scale, worst_action=lambda o: o[:, 0].long())


@pytest.mark.filterwarnings("ignore")
def test_worst_action_wrapper_passes_the_env_checker_and_errs_consistently():
    check_env(envs.AdversarialObservation(gym.make("CartPole-v1"), linear_policy, 0.05, "pgd-worst"),
              skip_render_check=True)
    env = envs.AdversarialObservation(gym.make("CartPole-v1"), linear_policy, 0.05, "pgd-worst")
    steered = 0
    for clean, obs in greedy_rollout(env, 200):
        worst = int(clean[2] < 0)
        if greedy(clean[None])[0] == worst:
            assert np.allclose(obs, clean), "where the agent already errs, the wrapper leaves the observation alone"
        steered += greedy(clean[None])[0] != worst and greedy(obs[None])[0] == worst
    assert steered > 50
    with pytest.raises(ValueError, match="worst-action rule"):
        envs.AdversarialObservation(gym.make("Pendulum-v1"), linear_policy, 0.05, "pgd-worst")
