"""The planning observation attacker (envs.planning_attack) and the "planning" / "worst" rows of rl-attack."""

import pytest
import torch
from torch.distributions import Categorical

from envs.observation_attacks import observation_scale
from envs.planning_attack import ACROBOT, CARTPOLE, GOAL_SCORE, lookahead_scores, plan, reachable_actions, simulator_for
from rlab.rl.attack_bench import attack_curve

SCALE = observation_scale("CartPole-v1")


@pytest.fixture(scope="module")
def agent(tiny_cartpole_agent):
    return tiny_cartpole_agent


def near_upright(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 4, generator=g) * 2 - 1) * torch.tensor([0.5, 0.5, 0.08, 0.5])


def test_planner_stays_in_the_ball_and_induces_only_actions_the_agent_takes(agent):
    obs, eps = near_upright(64), 0.05
    x_adv, induced = plan(agent, obs, eps, SCALE, CARTPOLE)
    assert x_adv.shape == obs.shape and induced.shape == (64,)
    assert ((x_adv - obs).abs() <= eps * SCALE + 1e-6).all()
    with torch.no_grad():
        taken = agent(x_adv).logits.argmax(-1)
        clean = agent(obs).logits.argmax(-1)
    assert torch.equal(taken, induced)
    assert (induced != clean).sum() >= 5, "the planner should flip a share of these near-balanced states"
    assert torch.equal(x_adv[induced == clean], obs[induced == clean]), "no perturbation where it keeps the action"


def test_an_action_pgd_cannot_reach_is_never_chosen():
    def stubborn(obs):  # always pushes right, by a logit margin no eps-ball can overturn
        return Categorical(logits=torch.stack((obs[:, 0] * 0, obs[:, 0] * 0 + 50.0), -1))

    obs = near_upright(16)
    x_adv, reachable = reachable_actions(stubborn, obs, 0.05, SCALE)
    assert reachable[1].all() and not reachable[0].any()
    x_plan, induced = plan(stubborn, obs, 0.05, SCALE, CARTPOLE)
    assert (induced == 1).all() and torch.equal(x_plan, obs)


def test_lookahead_scores_sooner_failure_lower():
    # the pole far over to the right (theta 0.18 rad, falling): pushing right saves time, pushing left drops it
    obs = torch.tensor([[0.0, 0.0, 0.18, 0.5]] * 2)
    always_right = lambda o: Categorical(logits=torch.stack((o[:, 0] * 0, o[:, 0] * 0 + 1), -1))
    scores = lookahead_scores(always_right, CARTPOLE, obs, torch.tensor([0, 1]), depth=3)
    assert scores[0] < 0, "pushing left with the pole at 0.18 rad ends the episode within 3 steps"
    assert scores[0] < scores[1]


def test_planning_is_refused_where_the_lab_cannot_simulate():
    assert simulator_for("Acrobot-v1") is ACROBOT
    with pytest.raises(ValueError, match="simulator"):
        simulator_for("LunarLander-v3")
    with pytest.raises(ValueError, match="depth"):
        plan(lambda o: Categorical(logits=torch.zeros(len(o), 2)), near_upright(2), 0.1, SCALE, CARTPOLE, depth=0)


def test_planning_drops_a_trained_agent_far_below_random_noise_and_worst_is_the_minimum(agent):
    rows = attack_curve(agent, "CartPole-v1", [0.05], ["none", "random", "planning"], episodes=3, seed=0,
                        pgd_steps=5, device=torch.device("cpu"), plan_horizon=0)
    got = {r["method"]: r for r in rows}
    assert got["none"]["mean_return"] == 500
    assert got["random"]["mean_return"] >= 400
    assert got["planning"]["mean_return"] < 0.5 * got["random"]["mean_return"]
    assert got["worst"]["mean_return"] == min(got["random"]["mean_return"], got["planning"]["mean_return"])
    assert got["worst"]["strongest"] == "planning"


def test_rl_attack_offers_planning_and_learned_and_refuses_planning_without_a_simulator():
    from rlab.errors import UserError
    from rlab.rl.attack_bench import RLAttackConfig

    assert RLAttackConfig(run_dir="x", methods=["planning", "learned"]).methods == ["planning", "learned"]
    with pytest.raises(UserError, match="plan-depth"):
        RLAttackConfig(run_dir="x", plan_depth=0)
    with pytest.raises(UserError, match="plan-horizon"):
        RLAttackConfig(run_dir="x", plan_horizon=-1)
    lander_policy = lambda obs: Categorical(logits=torch.zeros(len(obs), 4))
    with pytest.raises(UserError, match="simulator of LunarLander-v3"):
        attack_curve(lander_policy, "LunarLander-v3", [0.05], ["planning"], episodes=1, seed=0, pgd_steps=2,
                     device=torch.device("cpu"))


def test_acrobot_simulator_is_gymnasiums_step_and_reads_the_state_back_from_observations():
    import gymnasium
    import numpy as np

    from envs.acrobot import acrobot_observation, acrobot_state, acrobot_step

    env = gymnasium.make("Acrobot-v1").unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    states = rng.uniform([-np.pi, -np.pi, -4 * np.pi, -9 * np.pi], [np.pi, np.pi, 4 * np.pi, 9 * np.pi], (300, 4))
    actions = rng.integers(3, size=300)
    ours, ours_done = acrobot_step(torch.tensor(states), torch.tensor(actions))
    for state, action, mine, done in zip(states, actions, ours, ours_done):
        env.state = state.copy()
        obs, reward, terminated, _, _ = env.step(int(action))
        assert bool(done) == terminated and reward == (0.0 if terminated else -1.0)
        assert np.allclose(acrobot_observation(mine[None])[0].numpy(), obs, atol=1e-6)
        assert np.allclose(acrobot_state(torch.tensor(obs)[None])[0].numpy(), env.state, atol=1e-5)
    assert 10 < int(ours_done.sum()) < 290, "the draw should hold both ends"


def test_acrobot_lookahead_scores_reaching_the_bar_above_everything_and_energy_below():
    def torque(a):  # the victim's own action: always a
        return lambda o: Categorical(logits=torch.nn.functional.one_hot(torch.full((len(o),), a), 3).float() * 9)

    from envs.acrobot import acrobot_observation, acrobot_step

    # the free end just below the bar, swinging up: only torque +1 lifts it over within one step
    state = torch.tensor([[2.26, -0.53, 1.91, -1.74]], dtype=torch.float64).repeat(3, 1)
    _, done = acrobot_step(state, torch.tensor([0, 1, 2]))
    assert done.tolist() == [False, False, True]
    scores = lookahead_scores(torque(1), ACROBOT, acrobot_observation(state), torch.tensor([0, 1, 2]), depth=1)
    assert scores[2] >= GOAL_SCORE and (scores[:2] < GOAL_SCORE).all()
    # hanging at rest the progress is 0; any push adds energy, none removes it
    rest = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 0.0]]).repeat(3, 1)
    scores = lookahead_scores(torque(1), ACROBOT, rest, torch.tensor([0, 1, 2]), depth=1)
    assert scores[1] == pytest.approx(0.0, abs=1e-9) and (scores[[0, 2]] > 0).all()


def test_beam_plan_replays_in_the_simulator_with_actions_the_agent_really_takes(agent):
    from envs.planning_attack import FAILED, beam_plan, induce

    obs, eps = near_upright(8, seed=2), 0.07
    found = beam_plan(agent, CARTPOLE, obs, eps, SCALE, horizon=120, beam=8, steps=5)
    fails = found.score < FAILED / 2
    assert fails.sum() >= 6, "the search should find the tiny agent's failure within 120 steps from most states"
    assert ((found.x_adv - obs).abs() <= eps * SCALE + 1e-6).all()
    state, alive = CARTPOLE.state_of(obs), torch.ones(8, dtype=torch.bool)
    for t in range(found.actions.shape[1]):
        planned = found.actions[:, t]
        assert ((planned >= 0) == alive).all(), "a plan runs until its episode ends, no longer"
        if not alive.any():
            break
        seen = CARTPOLE.observe(state[alive])
        x_adv = induce(agent, seen, planned[alive], eps, SCALE, steps=5)
        with torch.no_grad():
            assert torch.equal(agent(x_adv).logits.argmax(-1), planned[alive]), "every planned action is in reach"
        state[alive], terminated = CARTPOLE.step(state[alive], planned[alive])
        assert torch.allclose(state[alive], found.states[alive, t])
        ended = alive.clone()
        ended[alive] = terminated
        assert torch.equal(ended[fails], (found.score[fails] - FAILED == t + 1)), "it fails when the plan says"
        alive &= ~ended
    assert not alive[fails].any() and alive[~fails].all()


def test_receding_horizon_planner_stays_in_the_ball_and_induces_only_actions_the_agent_takes(agent):
    import gymnasium

    from envs.planning_attack import FAILED, RecedingHorizonPlanner

    eps, n = 0.07, 4
    planner = RecedingHorizonPlanner(agent, CARTPOLE, eps, SCALE, horizon=120, beam=8, steps=5,
                                     generator=torch.Generator().manual_seed(0))
    envs = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make("CartPole-v1")] * n)
    obs, _ = envs.reset(seed=0)
    followed = flipped = 0
    for _ in range(40):
        seen = torch.as_tensor(obs, dtype=torch.float32)
        x_adv = planner(seen)
        assert ((x_adv - seen).abs() <= eps * SCALE + 1e-6).all()
        with torch.no_grad():
            taken, clean = agent(x_adv).logits.argmax(-1), agent(seen).logits.argmax(-1)
        assert torch.equal(taken, planner.induced)
        assert torch.equal(x_adv[taken == clean], seen[taken == clean]), "no perturbation where it keeps the action"
        followed += int((planner.plan.score < FAILED / 2).sum())
        flipped += int((taken != clean).sum())
        obs, *_ = envs.step(taken.numpy())
    envs.close()
    assert followed >= 100 and flipped >= 20, "the planner should find, follow and induce failing plans"


def test_receding_horizon_search_takes_the_agent_lower_than_the_one_step_planner(agent):
    def planning(horizon):
        rows = attack_curve(agent, "CartPole-v1", [0.05], ["planning"], episodes=2, seed=0, pgd_steps=5,
                            device=torch.device("cpu"), plan_horizon=horizon)
        return rows[0]["mean_return"]

    one_step, searched = planning(0), planning(50)
    assert searched <= one_step - 5, (searched, one_step)
