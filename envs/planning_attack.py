"""A planning observation attacker: make the agent, by observations inside the eps-ball, act out a simulated failure.

Huang et al. (2017) flip the action the agent takes now; "pgd-worst" pushes it toward a rule's
worst action. A planning attacker asks the environment instead (the model-based attacks of Lin et
al., 2017, "Tactics of Adversarial Attack on Deep Reinforcement Learning Agents", enchanting attack,
and the look-ahead view of the optimal attacker in Zhang et al., 2021, "Robust Reinforcement Learning
on State Observations with Learned Optimal Adversary"). The victim acts on its observation only, so
the attacker's problem is an MDP of its own: in state s it may pick any action in R(s), the actions
some s + delta in the ball makes the victim take; the env then steps. `rlab bench rl-attack --methods
planning` plays `RecedingHorizonPlanner`, model-predictive control of that MDP (the enchanting attack's
plan-then-act loop):

 A. search (every 10 steps; twice as long after each search that finds nothing sooner, up to horizon / 2):
    a sequence of reachable actions that ends in the agent's failure within `horizon` (100) simulated steps,
    the sooner of two searches: `beam_plan`, a beam search over R at every simulated step (each level
    expands every node by the actions targeted PGD induces on its simulated observation, the victim's
    argmax checked, and keeps per observation the `beam` (64) nodes of lowest score: failed nodes first,
    the sooner the lower, then the margin below); and `rollout_plan`, the rollout algorithm (Bertsekas)
    over the one-step planner: every reachable first action, then the one-step planner for the rest.
 B. follow: while the env does what the plan predicts (the simulator starts from float32 observations,
    the env keeps float64 states: a tolerance of 1e-4 of the scale) and each planned action is in reach,
    induce it by targeted PGD; a new search replaces the plan only if it fails sooner.
 C. off a plan and between plans, the one-step planner (`plan`, below) attacks.

Measured (12-02; the README's plain PPO agents, seeds 0-4, CartPole-v1, eps 0.016, 10 episodes, one thread):
the one-step planner 13.3 / 109.9 / 40.5 / 49.2 / 31.5, the receding-horizon planner 13.3 / 80.6 / 39.0 / 45.3
/ 25.6 (8% of clean on average; seed 1 keeps 16%); on their gamma-0.999 controls 39 / 51 / 104 / 40 / 176 (16%),
on the `--robust` agents 500 on every seed. Cost: a search ~1.5-3 CPU s for 10 episodes side by side (H 100,
beam 64, PGD 10); an agent that falls is searched a few times, one that holds 500 steps ~11 times: `rlab bench
rl-attack --methods none,pgd-worst,planning` took 59 CPU s for the 5 plain agents (11 with the one-step planner)
and 308 for the 5 `--robust` ones (500 steps each). Tried and dropped on the same agents (seed 1, whose
one-step figure is the worst; 5 episodes): a full tree over R at every simulated step, re-planned every
step, scored by the end margin: depth 3 / 5 / 8 gave 108 / 252 / 500, the committed planner's figures exactly (its lowest leaf is the committed branch); the same
tree scored by the victim's critic V(s): 500 at depth 3 and 5 (V sits at 1 / (1 - gamma) = 50 on every
state it does not see failing); by the lowest margin along the path: 500; rollouts of a pgd-worst base
attacker scored by the end margin: 500; a velocity-aware margin (x + c x_dot, theta + c theta_dot) in the
one-step planner, c = 0.05 / 0.1 / 0.2: 295 / 500 / 500. Why seed 1 stays near 80: along its attacked
trajectory the other action is in reach on only 39% of the steps (on every step of its clean trajectory),
and from its 5 start states no search found a failure sooner than 72-93 steps (beam 16 to 4096; margins on
theta alone, theta and x, the pendulum's amplitude sqrt(theta^2 + (theta_dot / omega)^2); a grid that keeps
one node per cell): failing it takes ~4 swings of growing amplitude, pumped only where the victim is unsure.

The one-step planner (`plan`; `--plan-horizon 0`, and the only planner on envs whose termination is the
agent's goal), at every step, for each observation s:

 1. reachable actions: for every action a, targeted PGD toward a inside the ball |delta_i| <= eps * scale_i
    (the attacks package's PGD in z = s / scale, as envs.observation_attacks does), then the policy is run
    again on the clamped s + delta: a is reachable only if argmax_a' pi(a' | s + delta) == a. The clean
    action a* (delta = 0) is always reachable.
 2. look-ahead: for every reachable a, simulate the env from s: step with a, then `depth - 1` steps of the
    victim acting greedily on simulated observations that the attacker keeps pushing toward the same a
    ("commit": one targeted FGSM step of the full radius, which flips the victim wherever it can), or on
    clean ones ("clean": the attacker plans as if it attacked only now).
 3. scoring: the margin to failure of the state the look-ahead ends in, m(state) = 1 - sum_k |state_k| /
    threshold_k over the dimensions that end the episode (CartPole: x / 2.4 and theta / 12 degrees); a
    branch that terminates within the look-ahead scores (t_fail - 1) / depth - 1 < 0 (sooner is worse), below
    every surviving branch. The attack induces the reachable action with the lowest score (ties: the lower
    action index) and returns its perturbed observation; re-planned at every step.

Depth and continuation, measured on a plain PPO agent (CartPole-v1, 500 clean, eps 0.016, 5 episodes;
pgd-worst: 152) with the margin's max form 1 - max_k |state_k| / threshold_k: commit at depth 1 / 2 / 3 / 4 /
8 / 15 / 40: 348 / 146 / 144 / 145 / 159 / 265 / 500; clean at depth 4 / 15: 152 / 399 (scoring the minimum
margin over a clean depth-25 look-ahead instead: 369). A long look-ahead lets the victim recover in
simulation, which hides the push that hurts; a short committed one measures which push drives the state
toward failure fastest. Hence the default: commit, depth 3. The sum form replaced the max: on a small
network cloned from a linear controller (the tests' agent, eps 0.05, 3 episodes) the max form left 213
(it steered toward a slow drift of the cart whenever x was the nearer limit), the sum form 120, theta
alone 120, pgd-worst 121; on another plain PPO agent (eps 0.016) all three forms left 12.7.
Tried and dropped (12-02, plain PPO seeds 1 / 3 of the README's table, eps 0.016, 5 episodes): scoring a branch
as doomed when the victim still falls within 10 or 30 clean steps after the committed look-ahead: depth 3
108 / 55 with or without it (the same episodes), depth 5 252 / 51, depth 8 500 / 48, depth 1 500 / 233. Along
those agents' clean trajectories both actions are reachable at every step, so the planner's limit is its
short horizon, not the ball.

The simulator needs the env's state from the observation: for CartPole the observation *is* the state
(x, x_dot, theta, theta_dot), rounded to float32, and envs.cartpole.cartpole_step is its physics, so the
look-ahead is exact up to that rounding. Acrobot-v1 (envs.acrobot): the angles come back from their cosines
and sines, envs.acrobot.acrobot_step is Gymnasium's RK4 step; there termination is the agent's goal (the free
end above the bar), so a look-ahead that reaches it scores above every other (the attacker avoids it) and the
margin is the agent's progress, its mechanical energy from hanging at rest (0) to standing up at rest (1): the
swing-up is an energy pump, and the attacker induces the action that drains it fastest. Environments the lab cannot simulate from an observation
are refused (SIMULATORS lists the known ones). Cost per step of the one-step planner: |A| PGD runs of `steps`
gradients and |A| * depth batched forward and backward passes of the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from envs.acrobot import ENERGY_DOWN, ENERGY_UP, acrobot_energy, acrobot_observation, acrobot_state, acrobot_step
from envs.cartpole import FORCE_MAG, THETA_THRESHOLD, X_THRESHOLD, cartpole_step
from envs.observation_attacks import _attack_seed, _env_family, _ScaledPolicyLogits

DEFAULT_DEPTH = 3  # measured best on CartPole (module docstring)
DEFAULT_HORIZON, DEFAULT_BEAM, DEFAULT_REPLAN = 100, 64, 10  # the beam search's (module docstring)
CONTINUATIONS = ("commit", "clean")


@dataclass(frozen=True)
class Simulator:
    """What the planner needs of an env, batched over N observations (states are float64, (N, k)).

    state_of: obs (N, d) -> state (N, k);  observe: state -> obs the agent would see (float32);
    step: (state, actions (N,)) -> (next state, terminated (N,));  margin: state -> (N,) how well the agent
    stands, higher is better for it (CartPole: distance to failure, 1 at the safest state, <= 0 once the
    episode has terminated; Acrobot: its energy towards the swing-up). goal_terminates: termination is the
    agent's success (Acrobot reaching the bar), not its failure (CartPole's pole falling).
    """

    state_of: Callable[[Tensor], Tensor]
    observe: Callable[[Tensor], Tensor]
    step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    margin: Callable[[Tensor], Tensor]
    goal_terminates: bool = False


def _cartpole_step(state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    force = torch.where(actions == 1, FORCE_MAG, -FORCE_MAG).to(torch.float64)
    next_state, terminated = cartpole_step(state.T.contiguous(), force)
    return next_state.T, terminated


def _cartpole_margin(state: Tensor) -> Tensor:
    return 1 - (state[:, 0].abs() / X_THRESHOLD + state[:, 2].abs() / THETA_THRESHOLD)


CARTPOLE = Simulator(state_of=lambda obs: obs.to(torch.float64), observe=lambda state: state.to(torch.float32),
                     step=_cartpole_step, margin=_cartpole_margin)


def _acrobot_progress(state: Tensor) -> Tensor:
    return (acrobot_energy(state) - ENERGY_DOWN) / (ENERGY_UP - ENERGY_DOWN)


ACROBOT = Simulator(state_of=acrobot_state, observe=acrobot_observation, step=acrobot_step, margin=_acrobot_progress,
                    goal_terminates=True)

# env family (as envs.observation_attacks names them: 'CartPole-v1' -> 'CartPole') -> its simulator
SIMULATORS: dict[str, Simulator] = {"CartPole": CARTPOLE, "Acrobot": ACROBOT}
GOAL_SCORE = 1e9  # a look-ahead that reaches the agent's goal scores above every one that does not


def simulator_for(env_id: str) -> Simulator:
    """The planner's simulator for `env_id`; ValueError naming the envs it can plan in otherwise."""
    family = _env_family(env_id)
    if family not in SIMULATORS:
        raise ValueError(f"attack 'planning' needs a simulator of {env_id} built from its observations; known env "
                         f"families: {', '.join(sorted(SIMULATORS))} (use 'learned' on other envs)")
    return SIMULATORS[family]


def _clamp_to_ball(x: Tensor, obs: Tensor, radius: Tensor) -> Tensor:
    return torch.maximum(torch.minimum(x, obs + radius), obs - radius)


def induce(policy, obs: Tensor, target: Tensor, eps: float, scale: Tensor, steps: int = 10,
           generator: torch.Generator | None = None) -> Tensor:
    """Targeted PGD toward target (N,) inside the ball (the attacks package's PGD in z = s / scale); where the
    policy already takes the target, obs itself. Returns (N, d) in the ball; check the induced action yourself."""
    import attacks

    with torch.no_grad():
        clean_action = policy(obs).logits.argmax(-1)
    x_adv = obs.clone()
    todo = clean_action != target
    if todo.any() and eps > 0:
        attack = attacks.PGD(steps=steps, rel_stepsize=2.5 / steps, bounds=None, seed=_attack_seed(generator))
        with torch.enable_grad():
            result = attack(_ScaledPolicyLogits(policy, scale), obs[todo] / scale, clean_action[todo], eps=eps,
                            target=target[todo])
        x_adv[todo] = result.x_adv.detach() * scale
    return _clamp_to_ball(x_adv, obs, eps * scale)


def reachable_actions(policy, obs: Tensor, eps: float, scale: Tensor, steps: int = 10,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Targeted PGD toward every action: (x_adv (A, N, d), reachable (A, N) bool).

    x_adv[a] lies in the ball; reachable[a] says the policy's greedy action on x_adv[a] really is a
    (checked by running the policy again). For the clean action, x_adv is obs itself.
    """
    with torch.no_grad():
        n_actions = policy(obs[:1]).logits.shape[-1]
    x_adv = torch.stack([induce(policy, obs, torch.full((len(obs),), a, dtype=torch.long, device=obs.device), eps,
                                scale, steps, generator) for a in range(n_actions)])
    with torch.no_grad():
        induced = policy(x_adv.reshape(-1, obs.shape[1])).logits.argmax(-1).reshape(n_actions, -1)
    reachable = induced == torch.arange(n_actions, device=obs.device)[:, None]
    return x_adv, reachable


def _fgsm_toward(policy, obs: Tensor, target: Tensor, radius: Tensor) -> Tensor:
    """One signed-gradient step of full size toward `target` (targeted FGSM): lowers CE(pi(s'), target)."""
    with torch.enable_grad():
        x = obs.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(policy(x).logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return (obs - radius * grad.sign()).detach()


def lookahead_scores(policy, simulator: Simulator, obs: Tensor, first_actions: Tensor, depth: int,
                     radius: Tensor | None = None) -> Tensor:
    """(N,) score of taking first_actions now, then depth - 1 greedy victim steps on the simulated states:
    the margin of the last state, or, if the look-ahead terminates at step t, (t - 1) / depth - 1 < 0 where
    that is the agent's failure and GOAL_SCORE + (depth - t) / depth where it is its goal (sooner is better).

    radius None: the victim sees clean observations after the first step. radius (d,): the attacker keeps
    pushing toward first_actions, with one targeted FGSM step of that radius, wherever that flips the victim.
    """
    state = simulator.state_of(obs)
    state, terminated = simulator.step(state, first_actions)
    score = simulator.margin(state)
    ended_at = torch.where(terminated, 1, 0)
    alive = ~terminated
    for t in range(2, depth + 1):
        if not alive.any():
            break
        seen = simulator.observe(state)
        if radius is not None:
            seen = _fgsm_toward(policy, seen, first_actions, radius)
        with torch.no_grad():
            actions = policy(seen).logits.argmax(-1)
        next_state, terminated = simulator.step(state, actions)
        state = torch.where(alive[:, None], next_state, state)
        score = torch.where(alive, simulator.margin(state), score)
        ended_at = torch.where(alive & terminated, t, ended_at)
        alive = alive & ~terminated
    if simulator.goal_terminates:
        return torch.where(ended_at > 0, GOAL_SCORE + (depth - ended_at) / depth, score)
    return torch.where(ended_at > 0, (ended_at - 1) / depth - 1, score)


FAILED = -1e6  # a search node that fails at simulated step t scores FAILED + t: below every running one


def _rank_within(groups: Tensor, scores: Tensor) -> Tensor:
    """The rank of each score among the scores of its group (0: the lowest; ties by position)."""
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=groups.device) - torch.searchsorted(sorted_groups, sorted_groups)
    return rank


def _node_scores(simulator: Simulator, state: Tensor, ended: Tensor) -> Tensor:
    """A search node's score, lower is worse for the agent: its margin while the episode runs; FAILED + t once it
    failed at simulated step t (sooner lower), GOAL_SCORE - t once it reached the agent's goal there."""
    at = ended.to(torch.float64)
    return torch.where(ended > 0, GOAL_SCORE - at if simulator.goal_terminates else FAILED + at,
                       simulator.margin(state))


def _lowest_per_group(groups: Tensor, scores: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(lowest score (n,), index of the first node holding it (n,)) of each group 0..n-1 (every group non-empty)."""
    best = torch.full((n,), torch.inf, dtype=torch.float64, device=scores.device).scatter_reduce(0, groups, scores,
                                                                                                 "amin")
    index = torch.full((n,), -1, dtype=torch.long, device=scores.device)
    is_best = scores == best[groups]
    index[groups[is_best].flip(0)] = is_best.nonzero(as_tuple=True)[0].flip(0)  # the last write is the first node
    return best, index


@dataclass
class Plan:
    """A beam search's answer per observation: x_adv (N, d) inducing actions[:, 0]; actions (N, H) the attacker's
    sequence (-1 after the plan ends); states (N, H, k) the simulated state after each of them; score (N,)."""

    x_adv: Tensor
    actions: Tensor
    states: Tensor
    score: Tensor


def beam_plan(policy, simulator: Simulator, obs: Tensor, eps: float, scale: Tensor, horizon: int, beam: int,
              steps: int = 10, generator: torch.Generator | None = None) -> Plan:
    """Beam search over the attacker's reachable actions at every simulated step (module docstring): each level
    expands every living node by the actions targeted PGD induces on its simulated observation (the victim's argmax
    checked, as at the real step), and keeps, per observation, the `beam` nodes of lowest score (`_node_scores`:
    failures first, the sooner the lower, then the margin). The plan is the path to the lowest node found."""
    n, device = len(obs), obs.device
    levels = []  # per simulated step, the kept nodes: (parent index into the level before, action, state)
    state = simulator.state_of(obs)
    root = torch.arange(n, device=device)
    ended = torch.zeros(n, dtype=torch.long, device=device)
    x_root = None
    for t in range(1, horizon + 1):
        alive = ended == 0
        if not alive.any():
            break
        seen = obs[alive] if t == 1 else simulator.observe(state[alive])
        x_adv, reach = reachable_actions(policy, seen, eps, scale, steps, generator)
        if t == 1:
            x_root = x_adv  # (A, N, d): every observation is alive at the root
        a_idx, m_idx = reach.nonzero(as_tuple=True)
        parents = torch.cat((alive.nonzero(as_tuple=True)[0][m_idx], (~alive).nonzero(as_tuple=True)[0]))
        actions = torch.cat((a_idx, torch.full((int((~alive).sum()),), -1, dtype=torch.long, device=device)))
        n_new = len(m_idx)
        next_state, terminated = simulator.step(state[parents[:n_new]], a_idx)
        state = torch.cat((next_state, state[parents[n_new:]]))
        ended = torch.cat((torch.where(terminated, t, 0), ended[parents[n_new:]]))
        root = root[parents]
        score = _node_scores(simulator, state, ended)
        keep = _rank_within(root, score) < beam
        parents, actions, state, ended, root = parents[keep], actions[keep], state[keep], ended[keep], root[keep]
        levels.append((parents, actions, state))
    best, node = _lowest_per_group(root, _node_scores(simulator, state, ended), n)
    depth = len(levels)
    plan_actions = torch.full((n, depth), -1, dtype=torch.long, device=device)
    plan_states = torch.zeros((n, depth, state.shape[1]), dtype=state.dtype, device=device)
    for t in range(depth - 1, -1, -1):
        parents, actions, states = levels[t]
        plan_actions[:, t], plan_states[:, t] = actions[node], states[node]
        node = parents[node]
    first = plan_actions[:, 0]
    return Plan(x_root[first, torch.arange(n, device=device)], plan_actions, plan_states, best)


def plan(policy, obs: Tensor, eps: float, scale: Tensor, simulator: Simulator, depth: int = DEFAULT_DEPTH,
         steps: int = 10, continuation: str = "commit",
         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(s' (N, d) in the ball, the action (N,) the planner induced with it) for a Categorical policy: the
    reachable action with the worst look-ahead (module docstring). obs (N, d) raw observations."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    if continuation not in CONTINUATIONS:
        raise ValueError(f"continuation must be one of {', '.join(CONTINUATIONS)}, got {continuation!r}")
    obs = torch.as_tensor(obs).detach()
    scale = torch.as_tensor(scale, dtype=obs.dtype, device=obs.device)
    x_adv, reachable = reachable_actions(policy, obs, eps, scale, steps, generator)
    n_actions, n = reachable.shape
    candidates = torch.arange(n_actions, device=obs.device).repeat_interleave(n)
    scores = lookahead_scores(policy, simulator, obs.repeat(n_actions, 1), candidates, depth,
                              eps * scale if continuation == "commit" else None).reshape(n_actions, n)
    chosen = torch.where(reachable, scores, torch.inf).argmin(0)
    return x_adv[chosen, torch.arange(n, device=obs.device)], chosen


def planning_attack(policy, obs: Tensor, eps: float, scale: Tensor, simulator: Simulator,
                    depth: int = DEFAULT_DEPTH, steps: int = 10, continuation: str = "commit",
                    generator: torch.Generator | None = None) -> Tensor:
    """The planner's observations s' only (see `plan`): the attack as `rlab bench rl-attack` plays it."""
    return plan(policy, obs, eps, scale, simulator, depth, steps, continuation, generator)[0]


def rollout_plan(policy, simulator: Simulator, obs: Tensor, eps: float, scale: Tensor, horizon: int,
                 depth: int = DEFAULT_DEPTH, steps: int = 10, generator: torch.Generator | None = None) -> Plan:
    """The rollout algorithm over the one-step planner (`plan`, commit): for every reachable first action, its
    simulated future when `plan` attacks every later step, `horizon` steps in all; the plan is the first action
    whose rollout scores lowest (`_node_scores`: the soonest failure, else the lowest final margin). Never worse in
    simulation than `plan` itself, whose own choice is one of the rollouts (Bertsekas's cost improvement)."""
    x_root, reachable = reachable_actions(policy, obs, eps, scale, steps, generator)
    first, root = reachable.nonzero(as_tuple=True)
    n, m = len(obs), len(root)
    state, terminated = simulator.step(simulator.state_of(obs)[root], first)
    ended = torch.where(terminated, 1, 0)
    actions = torch.full((m, horizon), -1, dtype=torch.long, device=obs.device)
    states = state.new_zeros((m, horizon, state.shape[1]))
    actions[:, 0], states[:, 0] = first, state
    for t in range(2, horizon + 1):
        alive = ended == 0
        if not alive.any():
            break
        _, taken = plan(policy, simulator.observe(state[alive]), eps, scale, simulator, depth, steps, "commit",
                        generator)
        next_state, terminated = simulator.step(state[alive], taken)
        state = state.clone()
        state[alive] = next_state
        ended[alive] = torch.where(terminated, t, 0)
        actions[alive, t - 1], states[alive, t - 1] = taken, next_state
    best, pick = _lowest_per_group(root, _node_scores(simulator, state, ended), n)
    chosen = first[pick]
    return Plan(x_root[chosen, torch.arange(n, device=obs.device)], actions[pick], states[pick], best)


def _better(a: Plan, b: Plan) -> Plan:
    """Per observation, the plan of the two with the lower score (a's on ties)."""
    take_b = b.score < a.score
    pad = lambda x, h, fill: torch.cat((x, x.new_full((len(x), h - x.shape[1], *x.shape[2:]), fill)), 1)
    h = max(a.actions.shape[1], b.actions.shape[1])
    pick = lambda u, v: torch.where(take_b.view(-1, *[1] * (u.dim() - 1)), v, u)
    return Plan(pick(a.x_adv, b.x_adv), pick(pad(a.actions, h, -1), pad(b.actions, h, -1)),
                pick(pad(a.states, h, 0), pad(b.states, h, 0)), pick(a.score, b.score))


class RecedingHorizonPlanner:
    """The planning attacker as `rlab bench rl-attack` plays it, obs (N, d) -> s' (N, d), one call per env step
    (N side-by-side episodes): model-predictive control of the victim (Lin et al., 2017, enchanting attack).

    Every `replan` steps (twice as long after each search that found nothing sooner, up to horizon / 2: an agent
    that holds is searched ~10 times in 500 steps) an episode searches for a sequence of reachable actions that
    ends in the agent's failure within `horizon` steps: the beam search (`beam_plan`) and the rollouts of the
    one-step planner (`rollout_plan`), the sooner failure of the two, kept if it fails sooner than the plan it
    has. It follows it, inducing each planned action by targeted PGD, while the env does what the plan predicted
    (the simulator starts from float32 observations, the env keeps its float64 state; tolerance 1e-4 of the
    scale) and the action stays in reach. Off a plan, and between searches that found no failure, the one-step
    planner (`plan`, commit, depth 3) attacks. Every s' lies in the ball and
    makes the victim take the action the attacker meant (checked on the policy)."""

    def __init__(self, policy, simulator: Simulator, eps: float, scale: Tensor, horizon: int = DEFAULT_HORIZON,
                 beam: int = DEFAULT_BEAM, steps: int = 10, replan: int = DEFAULT_REPLAN,
                 generator: torch.Generator | None = None, depth: int = DEFAULT_DEPTH, tolerance: float = 1e-4):
        for name, value in (("horizon", horizon), ("beam", beam), ("replan", replan), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.policy, self.simulator, self.eps, self.scale = policy, simulator, eps, scale
        self.horizon, self.beam, self.steps, self.replan, self.depth = horizon, beam, steps, replan, depth
        self.generator, self.tolerance = generator, tolerance
        self.plan: Plan | None = None  # per episode: the failing plan it follows (score < FAILED / 2), or none
        self.induced: Tensor | None = None  # per episode: the action the last s' was made to induce
        # per episode: steps of its plan taken, steps since its last search, steps from one search to the next
        self.age = self.since_search = self.interval = None

    def _reset(self, obs: Tensor) -> None:
        n, state = len(obs), self.simulator.state_of(obs)
        self.plan = Plan(obs.clone(), torch.full((n, self.horizon), -1, dtype=torch.long, device=obs.device),
                         state.new_zeros((n, self.horizon, state.shape[1])),
                         torch.full((n,), torch.inf, dtype=torch.float64, device=obs.device))
        self.age = torch.zeros(n, dtype=torch.long, device=obs.device)
        self.since_search = torch.full((n,), self.replan, dtype=torch.long, device=obs.device)
        self.interval = self.since_search.clone()

    def _search(self, obs: Tensor) -> Plan:
        args = (self.eps, self.scale, self.horizon)
        found = beam_plan(self.policy, self.simulator, obs, *args, self.beam, self.steps, self.generator)
        return _better(found, rollout_plan(self.policy, self.simulator, obs, *args, self.depth, self.steps,
                                           self.generator))

    def __call__(self, obs: Tensor) -> Tensor:
        obs = torch.as_tensor(obs).detach()
        self.scale = scale = torch.as_tensor(self.scale, dtype=obs.dtype, device=obs.device)
        if self.plan is None or len(self.plan.actions) != len(obs):
            self._reset(obs)
        rows = torch.arange(len(obs), device=obs.device)
        at = self.age.clamp(max=self.horizon - 1)
        target = torch.where(self.age < self.horizon, self.plan.actions[rows, at], -1)
        expected = self.simulator.observe(self.plan.states[rows, (self.age - 1).clamp(0, self.horizon - 1)])
        on_plan = (self.plan.score < FAILED / 2) & (target >= 0) & \
            ((obs - expected).abs() <= self.tolerance * scale).all(-1)
        x_adv, self.induced = obs.clone(), target.clone()  # induced: the action each s' is meant to make it take
        if on_plan.any():
            x_adv[on_plan] = induce(self.policy, obs[on_plan], target[on_plan], self.eps, scale, self.steps,
                                    self.generator)
            with torch.no_grad():
                on_plan &= self.policy(x_adv).logits.argmax(-1) == target
        self.plan.score[~on_plan] = torch.inf
        search = (self.since_search >= self.interval).nonzero(as_tuple=True)[0]
        if len(search):
            found = self._search(obs[search])
            remaining = self.plan.score[search] - self.age[search]  # FAILED + the steps the current plan has left
            better = (found.score < FAILED / 2) & (found.score < remaining)
            adopt, h = search[better], found.actions.shape[1]
            self.plan.actions[adopt] = -1
            self.plan.actions[adopt, :h], self.plan.states[adopt, :h] = found.actions[better], found.states[better]
            self.plan.score[adopt], x_adv[adopt] = found.score[better], found.x_adv[better]
            self.induced[adopt] = found.actions[better, 0]
            self.age[adopt], self.since_search[search] = 0, 0
            # a search that found nothing sooner: wait twice as long for the next one, up to half the horizon
            self.interval[search] = torch.where(better, self.replan,
                                                (2 * self.interval[search]).clamp(max=max(self.horizon // 2, 1)))
            on_plan[adopt] = True
        rest = (~on_plan).nonzero(as_tuple=True)[0]
        if len(rest):
            x_adv[rest], self.induced[rest] = plan(self.policy, obs[rest], self.eps, scale, self.simulator,
                                                   self.depth, self.steps, "commit", self.generator)
        self.age += 1
        self.since_search += 1
        return x_adv
