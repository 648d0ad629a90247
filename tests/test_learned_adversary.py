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
