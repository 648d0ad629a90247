"""A learned observation adversary: PPO trains a director that a gradient attacker realises (PA-AD).

Zhang et al. (2021, "Robust Reinforcement Learning on State Observations with Learned Optimal
Adversary") show that for a fixed victim pi the strongest observation attacker is the optimal policy of
an MDP of its own: state s, action a perturbation s' in the ball B(s), reward minus the victim's reward
after it acts on s'. Learning s' directly is hard in high dimensions; PA-AD (Sun et al., 2022, "Who Is
the Strongest Enemy? Towards Optimal and Efficient Evasion Attacks in Deep RL") lets the RL "director"
choose only a direction in the victim's *action* space and a gradient "actor" find the s' in the ball
that moves pi that way. For a Categorical victim the director here picks a target action a_adv(s) (a
vertex of the policy simplex; with two actions that is every direction up to scale), and the actor is
targeted PGD toward it (envs.planning_attack.induce); where the victim already takes a_adv, s' = s.

    adversary MDP:  obs s_t (clean),  action a_adv,  victim acts argmax pi(. | PGD_{a_adv}(s_t)),
                    reward -r_t (the victim's reward), same episode ends as the env.

The director is the lab's PPO (rlab.rl.onpolicy.OnPolicyLearner with ppo.update) on that MDP as a vector
env (`VictimUnderAttack`), so it reads like any other training run. `train_adversary` trains one against a
fixed victim at one eps; `LearnedAdversary.perturb` plays it greedily (the "learned" attack of
`rlab bench rl-attack`); `save_adversary` / `load_adversary` keep it beside the bench run that trained it.
`AlternatingAdversary` is ATLA (Zhang et al., 2021): the same director trained in rounds against an agent
that trains against it (`rlab train --adv-obs atla`).

Reward shaping. The adversary's reward -r_t = -1 per step on CartPole says nothing until the victim falls;
against a victim that survives a whole episode under a random director, PPO sees a flat return and may never
find the pushes that topple it (32k steps: no learning on 2 of 5 plain PPO agents). Where the lab has a
margin to failure m(s) for the env (envs.planning_attack's simulator: CartPole; not Acrobot, see
shaping_for), the director is trained on

    r'_t = -r_t + gamma * Phi(s_{t+1}) - Phi(s_t),   Phi(s) = -m(s) / (1 - gamma),   Phi(terminal) = 0

a potential-based shaping (Ng, Harada & Russell, 1999, "Policy invariance under reward transformations"),
which leaves the optimal adversary unchanged and rewards every step that brings the state nearer to failure;
1 / (1 - gamma) puts the whole safe-to-failed swing of Phi on the scale of the discounted return. Measured:
on the two plain PPO agents it had failed on (the README's table, seeds 1 and 3; eps 0.016, 10 episodes,
pgd-worst 123 / 53), 32k steps unshaped left 500 / 220, shaped 500 / 48; shaped at 131k steps (95 CPU s) seed 1
fell to 263. So shaping mends one failure at the default budget and a 4x budget half-mends the other: the
learned adversary remains a lower bound on the optimal one, and the headline is the worst over all attacks.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from envs.observation_attacks import observation_scale
from envs.planning_attack import SIMULATORS, Simulator, induce
from rlab.rl.algos import a2c, ppo
from rlab.rl.environments import PotentialShaping, make_envs
from rlab.rl.onpolicy import OnPolicyLearner
from rlab.rl.policies import ActorCritic, make_actor_critic

# env steps the bench trains a learned adversary for: 32k (the first default) left 500 on every `--robust` CartPole
# agent where 131k took them to 330 +- 70 (README), so a shorter one would flatter a defended agent
LEARNED_STEPS = 131_072
# the director's PPO: CartPole-v1's preset (zoo) with 16 envs; the adversary's task is as easy as the victim's
DIRECTOR_OPTIONS = dict(n_envs=16, n_steps=32, gae_lambda=0.8, gamma=0.98, epochs=10, lr=1e-3, obs_norm=True,
                        hidden=[64, 64], anneal_lr=True, ent_coef=0.0)


class VictimUnderAttack(gym.vector.VectorWrapper):
    """The adversary's MDP around a vector env: actions are target actions of the victim, rewards are negated.

    Keeps the inner env's next-step autoreset: the step after an episode end resets and ignores the action.
    The potential-based shaping of the module docstring wraps it (rlab.rl.environments.PotentialShaping).
    """

    def __init__(self, envs: gym.vector.VectorEnv, victim, eps: float, scale: Tensor, pgd_steps: int = 10,
                 generator: torch.Generator | None = None):
        super().__init__(envs)
        if not isinstance(envs.single_action_space, gym.spaces.Discrete):
            raise ValueError(f"the learned adversary attacks discrete-action agents; this env has "
                             f"{envs.single_action_space}")
        self.victim, self.eps, self.scale, self.pgd_steps, self.generator = victim, eps, scale, pgd_steps, generator
        self._obs: np.ndarray | None = None

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._obs = np.asarray(obs, dtype=np.float32)
        return obs, info

    def step(self, targets):
        obs = torch.from_numpy(self._obs)
        seen = induce(self.victim, obs, torch.as_tensor(np.asarray(targets), dtype=torch.long), self.eps, self.scale,
                      self.pgd_steps, self.generator)
        with torch.no_grad():
            actions = self.victim(seen).logits.argmax(-1).numpy()
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self._obs = np.asarray(obs, dtype=np.float32)
        return obs, -np.asarray(reward, dtype=np.float64), terminated, truncated, info


def under_attack(envs: gym.vector.VectorEnv) -> VictimUnderAttack:
    """The VictimUnderAttack inside `envs` (a director's envs, shaped or not)."""
    while not isinstance(envs, VictimUnderAttack):
        envs = envs.env
    return envs


@dataclass
class LearnedAdversary:
    """A trained director with its victim and ball: `perturb(obs)` is the attack (greedy director + PGD)."""

    director: ActorCritic
    victim: Any
    eps: float
    scale: Tensor
    pgd_steps: int = 10
    generator: torch.Generator | None = None
    trained: dict[str, Any] | None = None  # how it was trained (train_adversary), what save_adversary records

    def targets(self, obs: Tensor) -> Tensor:
        with torch.no_grad():
            return self.director.sample(obs, deterministic=True)[0]

    def perturb(self, obs: Tensor) -> Tensor:
        return induce(self.victim, obs, self.targets(obs), self.eps, self.scale.to(obs.device), self.pgd_steps,
                      self.generator)


def shaping_for(env_id: str) -> Simulator | None:
    """The margin to failure the director's reward is shaped with, or None where the lab has none for env_id.

    None too where termination is the victim's goal (Acrobot): with Phi(terminal) = 0 the shaped reward would pay
    the director for letting the victim reach it; there the director learns from the episode's length alone."""
    from envs.observation_attacks import _env_family

    simulator = SIMULATORS.get(_env_family(env_id))
    return None if simulator is None or simulator.goal_terminates else simulator


def margin_potential(simulator: Simulator, gamma: float) -> Callable[[np.ndarray], np.ndarray]:
    """Observations (N, d) -> m(s) / (1 - gamma): the env's margin to failure on the discounted return's scale.

    The director is shaped with its negative (nearer failure is better for it), by
    rlab.rl.environments.PotentialShaping."""
    def potential(obs: np.ndarray) -> np.ndarray:
        return simulator.margin(simulator.state_of(torch.from_numpy(np.asarray(obs, dtype=np.float32)))).numpy() / (
            1.0 - gamma)
    return potential


def director_options(**overrides: Any) -> ppo.PPOOptions:
    """The director's PPO options: DIRECTOR_OPTIONS with `overrides` (fields of ppo.PPOOptions); ValueError else."""
    unknown = set(overrides) - {f for f in ppo.PPOOptions.__dataclass_fields__}
    if unknown:
        raise ValueError(f"unknown director options {sorted(unknown)}; allowed: the fields of ppo.PPOOptions")
    return ppo.PPOOptions(**{**DIRECTOR_OPTIONS, **overrides})


def director_learner(victim, env_id: str, eps: float, options: ppo.PPOOptions, seed: int, pgd_steps: int,
                     shaping: bool) -> tuple[OnPolicyLearner, dict[str, Any]]:
    """The lab's PPO learner on the adversary's MDP against `victim` (CPU), not started; and how it is configured
    (what save_adversary records). Its VictimUnderAttack is under_attack(learner.envs)."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0 for a learned adversary, got {eps!r}")
    scale = observation_scale(env_id)
    simulator = shaping_for(env_id) if shaping else None
    envs = VictimUnderAttack(make_envs(env_id, options.n_envs), victim, eps, scale, pgd_steps,
                             torch.Generator().manual_seed(seed))
    if simulator is not None:  # Phi(s) = -m(s) / (1 - gamma): nearer failure is better for the director
        potential = margin_potential(simulator, options.gamma)
        envs = PotentialShaping(envs, lambda obs: -potential(obs), options.gamma)
    learner = OnPolicyLearner(options, envs, torch.device("cpu"), seed, a2c.advantages, ppo.update)
    trained = {"env": env_id, "eps": eps, "seed": seed, "pgd_steps": pgd_steps, "shaping": simulator is not None,
               "hidden": list(options.hidden), "obs_norm": bool(options.obs_norm)}
    return learner, trained


def train_adversary(victim, env_id: str, eps: float, steps: int = LEARNED_STEPS, seed: int = 0, pgd_steps: int = 10,
                    device: torch.device | str = "cpu", shaping: bool = True,
                    **director_overrides: Any) -> LearnedAdversary:
    """PPO on the adversary's MDP for `steps` env steps against a fixed `victim` (obs -> Categorical); CPU.

    shaping: train on the potential-shaped reward where env_id has a margin to failure (module docstring)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    options = director_options(**director_overrides, steps=steps)
    victim = victim.cpu() if hasattr(victim, "cpu") else victim
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        learner, trained = director_learner(victim, env_id, eps, options, seed, pgd_steps, shaping)
        learner.start(seed)
        done = 0
        while done < steps:
            done += learner.iterate(1.0 - done / steps).env_steps
        learner.close()
    learner.agent.eval()
    # played with a fresh generator of the same seed, as load_adversary does: a saved adversary plays the same
    adversary = LearnedAdversary(learner.agent, victim, eps, observation_scale(env_id), pgd_steps,
                                 torch.Generator().manual_seed(seed), {**trained, "steps": steps})
    return adversary if torch.device(device).type == "cpu" else _on(adversary, torch.device(device))


# ----------------------------------------------------------------------------- ATLA: alternating training

ATLA_EVERY = 8  # agent updates between two rounds of the adversary (`rlab train --atla-every`)
ATLA_STEPS = 2048  # adversary env steps per round (`--atla-steps`); AlternatingAdversary says why


class AlternatingAdversary:
    """ATLA (Zhang et al., 2021, "Robust Reinforcement Learning on State Observations with Learned Optimal
    Adversary", ICLR): train the agent against a learned adversary that is itself trained against the agent,
    alternating:

        repeat:  N_v agent updates on observations s'_t = PGD_{a_adv}(s_t),  a_adv ~ director(s_t)   (agent's rollouts)
                 N_a director updates on the adversary MDP of the module docstring, victim = the agent now

    The director is this module's PA-AD director (PPO over target actions, realised by targeted PGD). ATLA's own
    adversary outputs the perturbation itself; training against a PA-AD director instead is what Sun et al. (2022)
    call PA-ATLA, in low dimensions the cheaper of the two. One director learns for the whole run: its weights,
    Adam moments and observation statistics carry over from round to round (the agent moves a little between
    rounds, so the last adversary is the best start for the next), and its learning rate does not anneal (it must
    keep up with the agent to the end). While the agent trains, the director's target is sampled from its policy
    (an on-policy adversary, as in ATLA; a diverse attack early on), and the director learns against the agent's
    greedy action (what `rlab bench rl-attack` plays). `rlab train --adv-obs atla` runs a round after every
    --atla-every agent updates (default ATLA_EVERY) for --atla-steps env steps (ATLA_STEPS): with CartPole's PPO
    preset (8 envs x 32 steps an update) both players see the same number of env steps, the simplest reading of
    ATLA's alternation. `perturb` is the agent's training attack; `train_round(steps)` one round; `state_dict` goes
    in the run's checkpoint; `adversary()` is the final director as a LearnedAdversary (save_adversary).

    What weakens it: the director is only a lower bound on the optimal adversary (a PPO policy trained a few
    thousand steps per round against a moving target), so an agent can learn to beat *this* director and stay
    weak against another attacker; ATLA's strongest agents are recurrent (an LSTM policy: under attack the best
    policy depends on the history, the lab's agents are MLPs) and add SA-PPO's regulariser (their "ATLA-PPO (LSTM)
    + SA-Reg"; here `rlab train --robust --adv-obs atla --algo sa-ppo --kappa 1 --adv-frac 0.75 --adv-margin 1
    --adv-constant 0` without the LSTM: 53 / 67% kept on two CartPole seeds, README), and Sun et al. (2022) lower ATLA
    agents' returns further with PA-AD. The lab therefore judges ATLA agents by the worst of all attacks (`rlab bench rl-attack`), among them a
    fresh learned adversary trained against the final agent.
    """

    def __init__(self, agent, env_id: str, eps: float, seed: int = 0, pgd_steps: int = 10, shaping: bool = True,
                 **director_overrides: Any):
        self.agent, self.eps, self.pgd_steps, self.seed = agent, eps, pgd_steps, seed
        self.victim = copy.deepcopy(agent).cpu().eval()  # the agent as of the last round, for the director's rollouts
        self.options = director_options(**{"anneal_lr": False, **director_overrides})
        with torch.random.fork_rng():  # the director's initial weights do not shift the agent's random stream
            torch.manual_seed(seed + 1)
            self.learner, self.trained = director_learner(self.victim, env_id, eps, self.options, seed + 1, pgd_steps,
                                                          shaping)
        self.scale = observation_scale(env_id)
        self.generator = torch.Generator().manual_seed(seed + 2)  # PGD random starts on the agent's observations
        self.rounds, self.steps_trained = 0, 0

    @property
    def director(self) -> ActorCritic:
        return self.learner.agent

    def start(self, seed: int) -> None:
        """(Re)start the director's envs (a run starts, or resumes from a checkpoint)."""
        self.learner.start(seed)

    def perturb(self, obs: Tensor) -> Tensor:
        """What the agent sees: targeted PGD inside the ball toward a target sampled from the director."""
        with torch.no_grad():
            targets = self.director.sample(obs.cpu())[0].to(obs.device)
        return induce(self.agent, obs, targets, self.eps, self.scale.to(obs.device), self.pgd_steps, self.generator)

    def train_round(self, steps: int) -> tuple[list[float], list[int]]:
        """Train the director for `steps` env steps (whole rollouts) against the agent as it is now; returns the
        director's finished episodes (its returns, the victim's lengths)."""
        self.victim.load_state_dict(self.agent.state_dict())
        returns: list[float] = []
        lengths: list[int] = []
        done = 0
        while done < steps:
            it = self.learner.iterate(1.0)
            done += it.env_steps
            returns += it.episode_returns
            lengths += it.episode_lengths
        self.rounds += 1
        self.steps_trained += done
        return returns, lengths

    def adversary(self) -> LearnedAdversary:
        """The director as it is now, attacking the agent (greedy play, as the bench's learned attack)."""
        self.victim.load_state_dict(self.agent.state_dict())
        return LearnedAdversary(self.director, self.victim, self.eps, self.scale, self.pgd_steps,
                                torch.Generator().manual_seed(self.trained["seed"]),
                                {**self.trained, "steps": self.steps_trained, "atla_rounds": self.rounds})

    def state_dict(self) -> dict[str, Any]:
        return {"director": self.learner.state_dict(),
                "director_pgd": under_attack(self.learner.envs).generator.get_state(),
                "agent_pgd": self.generator.get_state(), "rounds": self.rounds, "steps_trained": self.steps_trained}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["director"])
        under_attack(self.learner.envs).generator.set_state(state["director_pgd"])
        self.generator.set_state(state["agent_pgd"])
        self.rounds, self.steps_trained = int(state["rounds"]), int(state["steps_trained"])

    def close(self) -> None:
        self.learner.close()


def save_adversary(adversary: LearnedAdversary, path: str | Path, victim_run: str) -> Path:
    """Write the director's weights and how it was trained (env, eps, steps, victim run) to `path` (.pt)."""
    from rlab.runs import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    torch.save({"director": {k: v.cpu() for k, v in adversary.director.state_dict().items()},
                "trained": {**adversary.trained, "victim": str(victim_run)}}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_adversary(path: str | Path, victim, env_id: str, eps: float,
                   device: torch.device | str = "cpu") -> LearnedAdversary:
    """The adversary `save_adversary` wrote, attacking `victim` in env_id at eps; ValueError if it was trained
    for another env or eps (a director learns the pushes of one ball)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    t = saved["trained"]
    if t["env"] != env_id or not np.isclose(t["eps"], eps):
        raise ValueError(f"{path} was trained on {t['env']} at eps {t['eps']:g}, not {env_id} at eps {eps:g}")
    envs = make_envs(env_id, 1)
    director = make_actor_critic(envs.single_observation_space, envs.single_action_space, tuple(t["hidden"]),
                                 t["obs_norm"])
    envs.close()
    director.load_state_dict(saved["director"])
    director.eval()
    adversary = LearnedAdversary(director, victim, eps, observation_scale(env_id), t["pgd_steps"],
                                 torch.Generator().manual_seed(t["seed"]), t)
    return adversary if torch.device(device).type == "cpu" else _on(adversary, torch.device(device))


def _on(adversary: LearnedAdversary, device: torch.device) -> LearnedAdversary:
    adversary.director.to(device)
    adversary.victim.to(device)
    return adversary
