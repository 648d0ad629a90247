"""The learned observation adversary (rlab.rl.adversary, PA-AD): trained by PPO against a fixed victim."""

import gymnasium
import pytest
import torch

from rlab.rl.adversary import LearnedAdversary, VictimUnderAttack, train_adversary
from rlab.rl.environments import make_envs
from rlab.rl.evaluation import greedy_actor, run_episodes
from rlab.rl.policies import make_actor_critic
from envs.observation_attacks import observation_scale

SCALE = observation_scale("CartPole-v1")

EPS = 0.05


def returns_under(agent, perturb=None):
    return run_episodes(greedy_actor(agent, gymnasium.spaces.Discrete(2)), "CartPole-v1", 5, seed=0, perturb=perturb)


def test_learned_adversary_beats_noise_of_the_same_size_and_its_untrained_self(tiny_cartpole_agent):
    agent = tiny_cartpole_agent
    g = torch.Generator().manual_seed(0)
    from envs.observation_attacks import uniform_noise

    noise = returns_under(agent, lambda obs: uniform_noise(obs, EPS, SCALE, g)).mean()
    envs = make_envs("CartPole-v1", 1)
    torch.manual_seed(0)
    untrained = LearnedAdversary(make_actor_critic(envs.single_observation_space, envs.single_action_space), agent,
                                 EPS, SCALE, pgd_steps=3)
    envs.close()
    before = returns_under(agent, untrained.perturb).mean()
    adversary = train_adversary(agent, "CartPole-v1", EPS, steps=2048, seed=0, pgd_steps=3)
    after = returns_under(agent, adversary.perturb)
    assert noise >= 400, "uniform noise of this size barely hurts the agent"
    assert after.mean() < 0.5 * noise
    assert after.mean() < 0.8 * before, "training should make the director stronger than a random one"
    x = torch.tensor([[0.0, 0.1, 0.05, -0.2]])
    assert ((adversary.perturb(x) - x).abs() <= EPS * SCALE + 1e-6).all()


def test_adversary_mdp_negates_rewards_and_refuses_bad_input(tiny_cartpole_agent):
    agent = tiny_cartpole_agent
    envs = VictimUnderAttack(make_envs("CartPole-v1", 2), agent, EPS, SCALE, pgd_steps=2)
    envs.reset(seed=0)
    _, reward, *_ = envs.step([0, 1])
    assert (reward == -1).all()
    envs.close()
    with pytest.raises(ValueError, match="steps"):
        train_adversary(agent, "CartPole-v1", EPS, steps=0)
    with pytest.raises(ValueError, match="director options"):
        train_adversary(agent, "CartPole-v1", EPS, steps=8, gama=0.9)


def test_shaped_rewards_keep_the_discounted_return_up_to_the_first_potential(tiny_cartpole_agent):
    """Potential-based shaping (Ng et al., 1999): sum_t g^t r'_t = sum_t g^t r_t - Phi(s_0) on a finished episode,
    so the optimal adversary is unchanged; and a step toward failure earns more than the raw -1."""
    from rlab.rl.adversary import director_learner, director_options, margin_potential, shaping_for

    gamma, pushes = 0.98, []
    learner, trained = director_learner(tiny_cartpole_agent, "CartPole-v1", 0.2,
                                        director_options(n_envs=1, gamma=gamma), seed=0, pgd_steps=3, shaping=True)
    shaped = learner.envs  # the director's MDP as it trains: the victim under attack, shaped
    assert trained["shaping"]
    obs, _ = shaped.reset(seed=3)
    phi0, total, raw, t = -margin_potential(shaping_for("CartPole-v1"), gamma)(obs)[0], 0.0, 0.0, 0
    while True:  # push toward the side the pole leans to: the episode ends early
        target = int(obs[0, 2] > 0)
        obs, reward, terminated, truncated, _ = shaped.step([target])
        total, raw, t = total + gamma ** t * reward[0], raw - gamma ** t, t + 1
        pushes.append(reward[0])
        if terminated[0] or truncated[0]:
            break
    assert terminated[0] and t < 100, "a strong push topples the tiny agent"
    assert total == pytest.approx(raw - phi0, abs=1e-6)
    assert max(pushes[:-1]) > -1, "moving toward failure is rewarded before the end"
    _, reward, *_ = shaped.step([0])  # the autoreset step: reward of the inner env, unshaped (masked in training)
    assert reward[0] == -0.0 or reward[0] == 0.0
    shaped.close()
    assert shaping_for("Acrobot-v1") is None


def test_saved_adversary_plays_like_the_trained_one_and_refuses_another_ball(tiny_cartpole_agent, tmp_path):
    from rlab.rl.adversary import load_adversary, save_adversary

    adversary = train_adversary(tiny_cartpole_agent, "CartPole-v1", EPS, steps=512, seed=1, pgd_steps=3)
    path = save_adversary(adversary, tmp_path / "adv.pt", "runs/rl/victim")
    loaded = load_adversary(path, tiny_cartpole_agent, "CartPole-v1", EPS)
    assert loaded.trained["victim"] == "runs/rl/victim" and loaded.trained["steps"] == 512
    obs = torch.randn(64, 4) * torch.tensor([0.5, 0.5, 0.05, 0.5])
    assert torch.equal(loaded.targets(obs), adversary.targets(obs))
    assert torch.equal(loaded.perturb(obs), adversary.perturb(obs))
    with pytest.raises(ValueError, match="eps 0.05, not CartPole-v1 at eps 0.1"):
        load_adversary(path, tiny_cartpole_agent, "CartPole-v1", 0.1)
