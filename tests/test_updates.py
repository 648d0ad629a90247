"""Every policy-gradient update against a hand computation, independent of learning.

One fixed rollout (T = 4 steps of N = 2 envs, next-step autoreset, gamma = 0.5)
with rewards and state values chosen so each return can be added up by hand, and a
linear-softmax policy pi(a|s) = softmax(W s) with a linear critic V(s) = u . s, so
that each loss has a closed-form gradient:

    d log pi(a|s) / dW = (e_a - pi(.|s)) s^T         d H[pi(.|s)] / dz_j = -pi_j (log pi_j + H)

Each update runs with plain SGD at learning rate 1 and no gradient clipping, so
the change of every parameter is minus the gradient of the loss the lecture writes
down (rlab/rl/algos/{vpg,ac,a2c,ppo}.py). The returns functions themselves are
checked against brute force in test_returns.py; here they are checked through the
algorithms that choose them.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from rlab.rl import returns as R
from rlab.rl.algos import a2c, ac, ppo, vpg
from rlab.rl.environments import make_envs
from rlab.rl.onpolicy import (Batch, Collector, OnPolicyLearner, Rollout, gradient_step, make_agent, make_optimizer,
                              minibatches, normalized, on_policy)
from rlab.rl.policies import make_actor_critic

GAMMA = 0.5
BOX4 = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)

# The rollout, step by step (e0 / e1 are the two envs; "reset" is the next-step-autoreset step after an end):
#   t   e0: r  end         V(s_t)   e1: r  end          V(s_t)
#   0       1              1.0          4               2.0
#   1       2              2.0          5  truncated    1.0
#   2       3  terminated  0.5          0  reset        3.0  <- V(final obs of e1's episode): its bootstrap
#   3       0  reset       4.0 <- V(terminal obs): never used   6               2.0
#   last_obs                1.0                         4.0  <- bootstraps e1's unfinished episode
REWARDS = [[1.0, 4.0], [2.0, 5.0], [3.0, 0.0], [0.0, 6.0]]
VALUES = [[1.0, 2.0], [2.0, 1.0], [0.5, 3.0], [4.0, 2.0]]
LAST_VALUES = [1.0, 4.0]
TERMINATED = [[False, False], [False, False], [True, False], [False, False]]
TRUNCATED = [[False, False], [False, True], [False, False], [False, False]]
ACTIONS = [[0, 1], [1, 1], [0, 0], [1, 0]]
# the valid (non-reset) steps, in the batch's order (row-major over (t, env)):
#   (0,e0) (0,e1) (1,e0) (1,e1) (2,e0) (3,e1)
V_VALID = [1.0, 2.0, 2.0, 1.0, 0.5, 2.0]


class LinearAgent(nn.Module):
    """pi(a|s) = softmax(W s), V(s) = u . s; the ActorCritic interface the updates use."""

    def __init__(self):
        super().__init__()
        self.actor = nn.Linear(3, 2, bias=False)
        self.critic = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.actor.weight.copy_(torch.tensor([[0.3, -0.2, 0.5], [-0.4, 0.1, 0.2]], dtype=torch.float64))
            self.critic.weight.copy_(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))  # V(s) = s[0]
        self.double()
        self.obs_norm = nn.Identity()

    def v(self, obs):
        return self.critic(obs).squeeze(-1)

    def evaluate_actions(self, obs, actions, normalized=False, with_entropy=True):
        logp_all = torch.log_softmax(self.actor(obs), -1)
        logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
        return logp, entropy, self.v(obs)

    def probs(self, obs):
        with torch.no_grad():
            return torch.softmax(self.actor(obs), -1)


def observation(value: float, t: int, n: int) -> list[float]:
    """An observation whose critic value is `value` (first coordinate) and whose policy differs per step."""
    return [value, 0.5 * t - n, 1.0 if (t + n) % 2 else -1.0]


def rollout() -> Rollout:
    obs = torch.tensor([[observation(VALUES[t][n], t, n) for n in range(2)] for t in range(4)], dtype=torch.float64)
    last_obs = torch.tensor([observation(LAST_VALUES[n], 4, n) for n in range(2)], dtype=torch.float64)
    return Rollout(obs=obs, actions=torch.tensor(ACTIONS), logp=torch.zeros(4, 2, dtype=torch.float64),
                   values=torch.tensor(VALUES, dtype=torch.float64), rewards=torch.tensor(REWARDS, dtype=torch.float64),
                   terminated=torch.tensor(TERMINATED), truncated=torch.tensor(TRUNCATED),
                   first_is_reset=torch.tensor([False, False]), last_obs=last_obs)


def sgd(agent):
    return torch.optim.SGD(agent.parameters(), lr=1.0)


def weights(agent):
    return agent.actor.weight.detach().clone(), agent.critic.weight.detach().clone()


def grad_logp(agent, obs, actions):
    """(B, 2, 3): d log pi(a_i|s_i) / dW, by the closed form (e_a - pi) s^T."""
    p = agent.probs(obs)
    e_a = torch.nn.functional.one_hot(actions.long(), 2).to(p.dtype)
    return (e_a - p)[:, :, None] * obs[:, None, :]


def grad_entropy(agent, obs):
    """(B, 2, 3): d H[pi(.|s_i)] / dW, by the closed form dH/dz_j = -p_j (log p_j + H)."""
    p = agent.probs(obs)
    h = -(p * p.log()).sum(-1, keepdim=True)
    return (-p * (p.log() + h))[:, :, None] * obs[:, None, :]


def grad_value_loss(agent, obs, target):
    """(1, 3): d mean((V(s) - target)^2) / du = 2 mean((V - target) s)."""
    with torch.no_grad():
        return (2 * (agent.v(obs) - target)[:, None] * obs).mean(0, keepdim=True)


def standardized(x):
    x = torch.as_tensor(x, dtype=torch.float64)
    return (x - x.mean()) / (x.std(unbiased=False) + 1e-8)


def close(a, b, tol=1e-9):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- VPG: versions 0-3 of the lecture

# G_t by hand for each return version. Without a learned baseline the sums are the lecture's pure Monte-Carlo
# sums: no bootstrap, and e1's unfinished last episode is left out (5 steps); with the value baseline the sums
# bootstrap from V at the truncation (3.0) and at the rollout's end (4.0), and every valid step counts.
HAND_G = {
    ("immediate", False): [1, 4, 2, 5, 3, 6],  # r_t: no sum, so no step is cut short
    ("reward-to-go", False): [1 + 2 + 3, 4 + 5, 2 + 3, 5, 3],
    ("discounted", False): [1 + .5 * 2 + .25 * 3, 4 + .5 * 5, 2 + .5 * 3, 5, 3],
    ("immediate", True): [1, 4, 2, 5, 3, 6],
    ("reward-to-go", True): [1 + 2 + 3, 4 + 5 + 3.0, 2 + 3, 5 + 3.0, 3, 6 + 4.0],
    ("discounted", True): [1 + .5 * 2 + .25 * 3, 4 + .5 * 5 + .25 * 3.0, 2 + .5 * 3, 5 + .5 * 3.0, 3, 6 + .5 * 4.0],
}
ALL_VALID = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (3, 1)]
FINISHED = ALL_VALID[:5]


def hand_vpg_advantages(returns: str, baseline: str) -> tuple[list, torch.Tensor, torch.Tensor]:
    g = torch.tensor(HAND_G[(returns, baseline == "value")], dtype=torch.float64)
    steps = ALL_VALID if baseline == "value" or returns == "immediate" else FINISHED
    if baseline == "none":
        a = g
    elif baseline == "mean":
        a = g - g.mean()
    elif baseline == "standardize":
        a = standardized(g)
    else:
        a = g - torch.tensor(V_VALID, dtype=torch.float64)
    return steps, a, g


@pytest.mark.parametrize("baseline", R.BASELINES)
@pytest.mark.parametrize("returns", R.RETURNS)
def test_vpg_advantages_and_gradient_match_the_lecture(returns, baseline):
    o = vpg.VPGOptions(returns=returns, baseline=baseline, gamma=GAMMA, value_epochs=1, ent_coef=0.0)
    agent, ro = LinearAgent(), rollout()
    steps, a_hand, g_hand = hand_vpg_advantages(returns, baseline)
    b = vpg.advantages(o, agent, ro)
    assert close(b.advantages, a_hand) and close(b.returns, g_hand)
    obs = torch.stack([ro.obs[t, n] for t, n in steps])
    actions = torch.tensor([ACTIONS[t][n] for t, n in steps])
    assert torch.equal(b.obs, obs) and torch.equal(b.actions, actions)
    assert torch.equal(b.logp, torch.stack([ro.logp[t, n] for t, n in steps]))
    assert torch.equal(b.values, torch.stack([ro.values[t, n] for t, n in steps]))

    w0, u0 = weights(agent)
    expected_policy_grad = -(a_hand[:, None, None] * grad_logp(agent, obs, actions)).mean(0)
    expected_value_grad = grad_value_loss(agent, obs, g_hand)
    with torch.no_grad():
        logp = agent.evaluate_actions(obs, actions)[0]
    out = vpg.update(o, agent, sgd(agent), b, 1.0, torch.Generator().manual_seed(0))
    w1, u1 = weights(agent)
    assert out["losses/policy"] == pytest.approx(-(a_hand * logp).mean().item(), rel=1e-9, abs=1e-12)
    assert close(w0 - w1, expected_policy_grad)  # SGD at lr 1: the change is minus the gradient
    if baseline == "value":  # then V regresses on G for value_epochs passes (here one): u -= d mean((V - G)^2)/du
        assert close(u0 - u1, expected_value_grad)
        assert out["losses/value"] == pytest.approx(((obs[:, 0] - g_hand) ** 2).mean().item(), rel=1e-9)
    else:
        assert torch.equal(u0, u1) and "losses/value" not in out


def test_vpg_entropy_bonus_and_value_epochs():
    """-c_e H[pi] joins the policy loss; value_epochs passes of the critic's regression follow, each on G."""
    o = vpg.VPGOptions(returns="discounted", baseline="value", gamma=GAMMA, value_epochs=2, ent_coef=0.1)
    agent, ro = LinearAgent(), rollout()
    b = vpg.advantages(o, agent, ro)
    steps, a_hand, g_hand = hand_vpg_advantages("discounted", "value")
    obs, actions = b.obs, b.actions
    w0, _ = weights(agent)
    expected = -(a_hand[:, None, None] * grad_logp(agent, obs, actions)).mean(0) - 0.1 * grad_entropy(agent, obs).mean(0)
    u = agent.critic.weight.detach().clone()
    for _ in range(2):  # two full-batch SGD steps of the regression, by hand
        u = u - 2 * ((obs @ u[0] - g_hand)[:, None] * obs).mean(0, keepdim=True)
    p = agent.probs(obs)
    entropy = -(p * p.log()).sum(-1).mean().item()
    out = vpg.update(o, agent, sgd(agent), b, 1.0, torch.Generator().manual_seed(0))
    assert close(w0 - agent.actor.weight.detach(), expected)
    assert close(agent.critic.weight.detach(), u)
    assert out["losses/entropy"] == pytest.approx(entropy, rel=1e-9)  # H before the step


def test_vpg_clips_the_policy_gradient_norm():
    o = vpg.VPGOptions(returns="immediate", baseline="none", max_grad_norm=0.01)
    agent, ro = LinearAgent(), rollout()
    b = vpg.advantages(o, agent, ro)
    w0, _ = weights(agent)
    g = -(b.advantages[:, None, None] * grad_logp(agent, b.obs, b.actions)).mean(0)
    vpg.update(o, agent, sgd(agent), b, 1.0, torch.Generator().manual_seed(0))
    assert g.norm() > 0.01
    assert close(w0 - agent.actor.weight.detach(), g * 0.01 / g.norm(), tol=1e-6)


# ----------------------------------------------------------------------------- actor-critic: MC and TD critics

# Targets by hand. MC: G_t, bootstrapped from V at the truncation (3.0) and the rollout's end (4.0), never
# through the termination. TD: y_t = r_t + gamma (1 - terminated_t) V(s_{t+1}).
HAND_TARGET = {
    "mc": [1 + .5 * 2 + .25 * 3, 4 + .5 * 5 + .25 * 3.0, 2 + .5 * 3, 5 + .5 * 3.0, 3, 6 + .5 * 4.0],
    "td": [1 + .5 * 2.0, 4 + .5 * 1.0, 2 + .5 * 0.5, 5 + .5 * 3.0, 3, 6 + .5 * 4.0],
}


@pytest.mark.parametrize("critic", ac.CRITICS)
def test_actor_critic_targets_mc_and_td(critic):
    agent, ro = LinearAgent(), rollout()
    b = ac.advantages(ac.ACOptions(critic=critic, gamma=GAMMA), agent, ro)
    target = torch.tensor(HAND_TARGET[critic], dtype=torch.float64)
    assert close(b.returns, target)
    assert close(b.advantages, target - torch.tensor(V_VALID, dtype=torch.float64))
    assert close(b.values, V_VALID)


@pytest.mark.parametrize("norm_adv", [False, True])
def test_actor_critic_joint_loss_and_gradient(norm_adv):
    """loss = -mean(A log pi) + c_v mean((V - target)^2) - c_e H, one joint step on the actor and the critic."""
    o = ac.ACOptions(critic="mc", gamma=GAMMA, vf_coef=0.25, ent_coef=0.1, max_grad_norm=0.0, norm_adv=norm_adv)
    agent, ro = LinearAgent(), rollout()
    b = ac.advantages(o, agent, ro)
    target = torch.tensor(HAND_TARGET["mc"], dtype=torch.float64)
    adv = target - torch.tensor(V_VALID, dtype=torch.float64)
    adv = standardized(adv) if norm_adv else adv
    obs, actions = b.obs, b.actions
    w0, u0 = weights(agent)
    with torch.no_grad():
        logp, entropy, value = agent.evaluate_actions(obs, actions)
    expected_w = -(adv[:, None, None] * grad_logp(agent, obs, actions)).mean(0) - 0.1 * grad_entropy(agent, obs).mean(0)
    expected_u = 0.25 * grad_value_loss(agent, obs, target)
    out = ac.update(o, agent, sgd(agent), b, 1.0, torch.Generator().manual_seed(0))
    assert close(w0 - agent.actor.weight.detach(), expected_w)
    assert close(u0 - agent.critic.weight.detach(), expected_u)
    assert out["losses/policy"] == pytest.approx(-(adv * logp).mean().item(), rel=1e-9)
    assert out["losses/value"] == pytest.approx(((value - target) ** 2).mean().item(), rel=1e-9)
    assert out["losses/entropy"] == pytest.approx(entropy.mean().item(), rel=1e-9)


def test_actor_critic_epochs_and_minibatches_take_one_step_each():
    """epochs x ceil(B / minibatch_size) steps: with lr 0 nothing moves, and the step count shows in Adam's state."""
    o = ac.ACOptions(critic="td", gamma=GAMMA, epochs=3, minibatch_size=4)
    agent, ro = LinearAgent(), rollout()
    b = ac.advantages(o, agent, ro)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    ac.update(o, agent, optimizer, b, 1.0, torch.Generator().manual_seed(0))
    assert int(optimizer.state[agent.actor.weight]["step"]) == 3 * 2  # 6 samples in minibatches of 4: 2 a pass


# ----------------------------------------------------------------------------- A2C: GAE advantages

def test_a2c_gae_advantages_by_hand():
    """delta_t = r_t + gamma (1 - term_t) V(s_{t+1}) - V(s_t); A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}."""
    agent, ro = LinearAgent(), rollout()
    b = a2c.advantages(a2c.A2COptions(gamma=GAMMA, gae_lambda=0.5), agent, ro)
    gl = GAMMA * 0.5
    d = {"e0": [2.0 - 1.0, 2.25 - 2.0, 3.0 - 0.5], "e1": [4.5 - 2.0, 6.5 - 1.0], "e1_next": 8.0 - 2.0}
    e0_2 = d["e0"][2]
    e0_1 = d["e0"][1] + gl * e0_2
    e0_0 = d["e0"][0] + gl * e0_1
    e1_1 = d["e1"][1]  # truncated at t = 1: the advantage does not carry across the episode end
    e1_0 = d["e1"][0] + gl * e1_1
    e1_3 = d["e1_next"]  # the rollout's last step: delta only (bootstrapped from V(last_obs) = 4)
    hand = torch.tensor([e0_0, e1_0, e0_1, e1_1, e0_2, e1_3], dtype=torch.float64)
    assert close(b.advantages, hand)
    assert close(b.returns, hand + torch.tensor(V_VALID, dtype=torch.float64))
    # lambda = 1 gives the MC critic's advantage, lambda = 0 the TD critic's (the two ends of the ladder)
    for lam, critic in ((1.0, "mc"), (0.0, "td")):
        b = a2c.advantages(a2c.A2COptions(gamma=GAMMA, gae_lambda=lam), agent, ro)
        assert close(b.returns, HAND_TARGET[critic])


@pytest.mark.parametrize("algo, advantages, update", [(vpg, vpg.advantages, vpg.update), (ac, ac.advantages, ac.update),
                                                       (a2c, a2c.advantages, ac.update),
                                                       (ppo, a2c.advantages, ppo.update)],
                         ids=["vpg", "ac", "a2c", "ppo"])
def test_registry_wires_each_algorithm_to_its_advantages_and_update(algo, advantages, update):
    """A2C is the actor-critic's joint update on GAE advantages; PPO takes the same advantages."""
    envs = make_envs("CartPole-v1", 1)
    learner = algo.ALGORITHM.make_learner(algo.ALGORITHM.options(hidden=[4]), envs, torch.device("cpu"), 0)
    assert learner.advantages is advantages and learner.update is update
    learner.close()


# ----------------------------------------------------------------------------- PPO: the clipped surrogate

def test_clipped_surrogate_where_the_clip_binds_and_where_it_does_not():
    """L = -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)), eps = 0.2: the pessimistic bound of Schulman et al."""
    cases = [  # (rho, A, the term min(...) by hand, does the clip bind?)
        (1.1, 2.0, 1.1 * 2.0, False),   # inside [0.8, 1.2]
        (0.9, -1.0, 0.9 * -1.0, False),
        (1.5, 2.0, 1.2 * 2.0, True),    # A > 0: no credit for raising pi beyond 1 + eps
        (0.5, -1.0, 0.8 * -1.0, True),  # A < 0: no credit for lowering pi beyond 1 - eps
        (0.5, 2.0, 0.5 * 2.0, False),   # A > 0 and rho < 1 - eps: the unclipped term is the smaller one
        (1.5, -1.0, 1.5 * -1.0, False),  # A < 0 and rho > 1 + eps: likewise
    ]
    rho = torch.tensor([c[0] for c in cases], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([c[1] for c in cases], dtype=torch.float64)
    terms = torch.tensor([c[2] for c in cases], dtype=torch.float64)
    for keep in ([0, 1], [2, 3], list(range(6))):  # the clip not binding, binding, and both together
        r = rho.detach()[keep].requires_grad_(True)
        loss = ppo.clipped_surrogate(r, adv[keep], 0.2)
        assert loss.item() == pytest.approx(-terms[keep].mean().item(), rel=1e-12)
        loss.backward()
        binds = torch.tensor([cases[k][3] for k in keep])
        # d L / d rho_i = -A_i / B where the unclipped term is taken, 0 where the clip binds
        expected = torch.where(binds, 0.0, -adv[keep] / len(keep))
        assert torch.allclose(r.grad, expected.to(r.grad.dtype), atol=1e-12)


def ppo_batch(agent, rho: list[float], adv: list[float], returns: list[float]) -> Batch:
    """The rollout's first valid steps with pi_old chosen so that pi / pi_old = rho."""
    ro = rollout()
    obs = torch.stack([ro.obs[t, n] for t, n in ALL_VALID])[: len(rho)]
    actions = torch.tensor([ACTIONS[t][n] for t, n in ALL_VALID])[: len(rho)]
    with torch.no_grad():
        logp, _, values = agent.evaluate_actions(obs, actions)
    old = logp - torch.tensor(rho, dtype=torch.float64).log()
    return Batch(obs, actions, old, values, torch.tensor(adv, dtype=torch.float64),
                 torch.tensor(returns, dtype=torch.float64))


@pytest.mark.parametrize("progress_left, norm_adv", [(1.0, False), (0.5, False), (1.0, True)])
def test_ppo_update_gradient_value_loss_and_entropy(progress_left, norm_adv):
    """One epoch, one minibatch: d/dW of -min(rho A, clip(rho) A) is -A rho d log pi where unclipped, else 0.

    With --anneal-lr the clip range falls with progress_left: at 0.5 it is 0.1, and rho = 1.15 is then clipped.
    """
    rho = [1.05, 1.5, 0.5, 0.95, 1.15, 0.7]  # none on a clip boundary (1 +- 0.2 or 1 +- 0.1)
    adv = [2.0, 2.0, -1.0, -1.0, 1.0, 3.0]
    target = [1.0, -1.0, 2.0, 0.0, 3.0, 1.5]
    o = ppo.PPOOptions(epochs=1, minibatch_size=0, clip=0.2, anneal_lr=True, norm_adv=norm_adv, vf_coef=0.5,
                       ent_coef=0.01, max_grad_norm=0.0)
    agent = LinearAgent()
    b = ppo_batch(agent, rho, adv, target)
    clip = 0.2 * progress_left
    a = standardized(adv) if norm_adv else torch.tensor(adv, dtype=torch.float64)
    r = torch.tensor(rho, dtype=torch.float64)
    unclipped = r * a <= r.clamp(1 - clip, 1 + clip) * a  # where min() takes the unclipped term
    obs, actions = b.obs, b.actions
    w0, u0 = weights(agent)
    with torch.no_grad():
        entropy = agent.evaluate_actions(obs, actions)[1]
    coef = torch.where(unclipped, a * r, torch.zeros_like(a))
    expected_w = -(coef[:, None, None] * grad_logp(agent, obs, actions)).mean(0) - 0.01 * grad_entropy(agent, obs).mean(0)
    expected_u = 0.5 * grad_value_loss(agent, obs, b.returns)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    out = ppo.update(o, agent, sgd(agent), b, progress_left, generator)
    assert torch.equal(generator.get_state(), state)  # one minibatch of the whole rollout: no permutation drawn
    assert close(w0 - agent.actor.weight.detach(), expected_w)
    assert close(u0 - agent.critic.weight.detach(), expected_u)
    assert out["losses/policy"] == pytest.approx(-torch.min(r * a, r.clamp(1 - clip, 1 + clip) * a).mean().item())
    assert out["losses/value"] == pytest.approx(((obs[:, 0] - b.returns) ** 2).mean().item(), rel=1e-9)
    assert out["losses/entropy"] == pytest.approx(entropy.mean().item(), rel=1e-9)
    assert out["losses/clipfrac"] == pytest.approx(((r - 1).abs() > clip).double().mean().item())
    assert out["losses/approx_kl"] == pytest.approx(((r - 1) - r.log()).mean().item(), rel=1e-9)


def test_ppo_without_entropy_bonus_reports_the_entropy_after_the_update():
    o = ppo.PPOOptions(epochs=2, minibatch_size=0, anneal_lr=False, norm_adv=False, ent_coef=0.0, max_grad_norm=0.0)
    agent = LinearAgent()
    b = ppo_batch(agent, [1.0] * 6, [1.0, -1.0, 2.0, 0.5, -0.5, 1.0], [0.0] * 6)
    out = ppo.update(o, agent, sgd(agent), b, 1.0, torch.Generator().manual_seed(0))
    p = agent.probs(b.obs)
    assert out["losses/entropy"] == pytest.approx(-(p * p.log()).sum(-1).mean().item(), rel=1e-9)


def test_ppo_minibatches_and_epochs():
    o = ppo.PPOOptions(epochs=2, minibatch_size=4, anneal_lr=False)
    agent = LinearAgent()
    b = ppo_batch(agent, [1.0] * 6, [1.0, -1.0, 2.0, 0.5, -0.5, 1.0], [0.0] * 6)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    ppo.update(o, agent, optimizer, b, 1.0, torch.Generator().manual_seed(0))
    assert int(optimizer.state[agent.actor.weight]["step"]) == 2 * 2


# ----------------------------------------------------------------------------- the parts the updates share

def test_minibatches_partition_a_shuffled_batch():
    g = torch.Generator().manual_seed(0)
    parts = list(minibatches(10, 4, g))
    torch.manual_seed(123)  # the shuffle follows the learner's own generator, not torch's global RNG
    again = list(minibatches(10, 4, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert [len(p) for p in parts] == [4, 4, 2]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert torch.cat(parts).tolist() != list(range(10))  # shuffled (this seed's permutation moves something)
    whole = list(minibatches(5, 0, g))
    assert len(whole) == 1 and sorted(whole[0].tolist()) == list(range(5))


def test_normalized_and_gradient_step_clip():
    a = torch.tensor([1.0, 2.0, 6.0])
    assert close(normalized(a), (a - 3.0) / (a.std(unbiased=False) + 1e-8))
    assert torch.equal(normalized(a, on=False), a) and torch.equal(normalized(a[:1]), a[:1])
    p = nn.Parameter(torch.tensor([3.0, 4.0]))
    gradient_step([p], torch.optim.SGD([p], lr=1.0), (p * torch.tensor([3.0, 4.0])).sum(), max_grad_norm=1.0)
    assert torch.allclose(p.detach(), torch.tensor([3.0 - 0.6, 4.0 - 0.8]))  # the gradient (3, 4) scaled to norm 1
    q = nn.Parameter(torch.tensor([1.0]))
    gradient_step([q], torch.optim.SGD([q], lr=1.0), 5.0 * q.sum(), max_grad_norm=0.0)
    assert q.item() == pytest.approx(1.0 - 5.0)


def test_on_policy_learner_collects_updates_and_saves_its_state():
    """One iteration of the shared loop on CartPole: n_envs x n_steps env steps, the lr annealed, state round trip."""
    torch.manual_seed(0)
    o = ppo.PPOOptions(n_envs=2, n_steps=8, epochs=1, minibatch_size=0, hidden=[8], lr=1e-2, anneal_lr=True)
    envs = make_envs("CartPole-v1", 2)
    learner = OnPolicyLearner(o, envs, torch.device("cpu"), 0, a2c.advantages, ppo.update)
    learner.start(0)
    before = {k: v.clone() for k, v in learner.agent.state_dict().items()}
    it = learner.iterate(0.25)
    assert it.env_steps == 16 and set(it.losses) >= {"losses/policy", "losses/value", "losses/clipfrac"}
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    after = learner.agent.state_dict()
    assert not torch.equal(before["actor.0.weight"], after["actor.0.weight"])
    assert after["obs_norm.count"] > before["obs_norm.count"]  # observation statistics updated after the step
    state = learner.state_dict()
    other = OnPolicyLearner(o, make_envs("CartPole-v1", 2), torch.device("cpu"), 1, a2c.advantages, ppo.update)
    other.load_state_dict(state)
    assert all(torch.equal(v, other.agent.state_dict()[k]) for k, v in after.items())
    assert torch.equal(other.generator.get_state(), learner.generator.get_state())
    learner.close()
    other.close()


def test_make_optimizer_is_adam_with_eps_1e5():
    p = nn.Parameter(torch.zeros(2))
    opt = make_optimizer([p], 0.1)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["eps"] == 1e-5


# ----------------------------------------------------------------------------- the options each update reads

@pytest.mark.parametrize("options, kwargs, message", [
    (vpg.VPGOptions, dict(returns="bogus"), "--returns 'bogus' is not allowed; choose from immediate, reward-to-go, discounted"),
    (vpg.VPGOptions, dict(baseline="median"), "--baseline 'median' is not allowed; choose from none, mean, standardize, value"),
    (vpg.VPGOptions, dict(value_epochs=0), "--value-epochs must be >= 1, got 0"),
    (vpg.VPGOptions, dict(minibatch_size=-1), "--minibatch-size must be >= 0, got -1"),
    (ac.ACOptions, dict(critic="q"), "--critic 'q' is not allowed; choose from mc, td"),
    (a2c.A2COptions, dict(gae_lambda=1.5), r"--gae-lambda must be in \[0, 1\], got 1.5"),
    (a2c.A2COptions, dict(gae_lambda=-0.5), r"--gae-lambda must be in \[0, 1\], got -0.5"),
    (ppo.PPOOptions, dict(gae_lambda=1.01), r"--gae-lambda must be in \[0, 1\], got 1.01"),
    (ppo.PPOOptions, dict(gae_lambda=-0.01), r"--gae-lambda must be in \[0, 1\], got -0.01"),
    (ppo.PPOOptions, dict(clip=0.0), "--clip must be positive, got 0.0"),
    (ppo.PPOOptions, dict(epochs=0), "--epochs must be >= 1, got 0"),
    (a2c.A2COptions, dict(minibatch_size=-2), r"--minibatch-size must be >= 0 \(0: the whole rollout\), got -2"),
    (ac.ACOptions, dict(vf_coef=-1.0), "--vf-coef and --ent-coef must be >= 0"),
])
def test_options_refuse_bad_values_with_one_line(options, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        options(**kwargs)


@pytest.mark.parametrize("options, kwargs", [
    (vpg.VPGOptions, dict(value_epochs=1, minibatch_size=0)),
    (a2c.A2COptions, dict(gae_lambda=0.0)), (a2c.A2COptions, dict(gae_lambda=1.0)),
    (ppo.PPOOptions, dict(gae_lambda=0.0, clip=1e-3)), (ppo.PPOOptions, dict(gae_lambda=1.0)),
    (ac.ACOptions, dict(critic="mc", epochs=1, minibatch_size=0)),
])
def test_options_accept_the_edges_of_their_ranges(options, kwargs):
    o = options(**kwargs)
    assert all(getattr(o, k) == v for k, v in kwargs.items())


def test_collector_fills_every_rollout_field_and_attacks_what_the_agent_sees():
    """The rollout holds what the agent saw (after an observation attack), in float32 on the device, seeded."""
    envs = make_envs("CartPole-v1", 2)
    agent = make_actor_critic(envs.single_observation_space, envs.single_action_space, (8,), normalize_obs=False)
    torch.manual_seed(0)
    ro = Collector(envs, agent, torch.device("cpu"), seed=5).collect(30)
    torch.manual_seed(0)
    collector = Collector(make_envs("CartPole-v1", 2), agent, torch.device("cpu"), seed=5)
    assert torch.equal(collector.collect(30).obs, ro.obs)  # same seed, same rollout
    assert collector.obs.dtype == np.float32 and collector.ep_length.dtype == np.int64
    assert ro.obs.shape == (30, 2, 4) and ro.actions.shape == ro.logp.shape == ro.values.shape == (30, 2)
    assert ro.obs.dtype == ro.rewards.dtype == ro.values.dtype == torch.float32
    assert ro.terminated.dtype == ro.truncated.dtype == ro.first_is_reset.dtype == torch.bool
    with torch.no_grad():
        assert torch.allclose(ro.values, agent.v(ro.obs))
        assert torch.allclose(ro.logp, agent.pi(ro.obs).log_prob(ro.actions), atol=1e-5)
    assert ro.last_obs.shape == (2, 4) and ro.rewards.sum() > 0 and ro.terminated.any()
    attacked = Collector(make_envs("CartPole-v1", 2), agent, torch.device("cpu"), seed=5,
                         attack=lambda obs: torch.full_like(obs, 0.25)).collect(5)
    assert torch.all(attacked.obs == 0.25) and torch.all(attacked.last_obs == 0.25)
    envs.close()
    collector.envs.close()


@pytest.mark.parametrize("algo, name, options", [(vpg, "vpg", vpg.VPGOptions), (ac, "ac", ac.ACOptions),
                                                 (a2c, "a2c", a2c.A2COptions), (ppo, "ppo", ppo.PPOOptions)])
def test_registry_entries_name_their_options(algo, name, options):
    entry = algo.ALGORITHM
    assert entry.name == name and entry.options is options and len(entry.description) > 10
    assert entry.make_agent(options(hidden=[4]), BOX4, gym.spaces.Discrete(2)).actor[0].in_features == 4
    gaussian = entry.make_agent(options(hidden=[4], log_std_init=-0.5), BOX4, gym.spaces.Box(-1, 1, (2,), np.float32))
    assert gaussian.log_std.tolist() == [-0.5, -0.5]


def test_on_policy_builds_a_registry_entry_on_the_shared_loop():
    """Called here, not only at import: its mutants must run under a test to be caught."""
    entry = on_policy("toy", "a toy entry", vpg.VPGOptions, a2c.advantages, ppo.update, label=lambda o: "toy!")
    assert (entry.name, entry.description, entry.options) == ("toy", "a toy entry", vpg.VPGOptions)
    assert entry.make_agent is make_agent and entry.variant(None) == "toy!"
    options, envs = vpg.VPGOptions(hidden=[4]), make_envs("CartPole-v1", 1)
    learner = entry.make_learner(options, envs, torch.device("cpu"), 3)
    assert learner.options is options and learner.envs is envs and learner.device == torch.device("cpu")
    assert learner.advantages is a2c.advantages and learner.update is ppo.update
    assert torch.equal(learner.generator.get_state(), torch.Generator().manual_seed(3).get_state())
    learner.close()
