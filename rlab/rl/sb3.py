"""Stable-Baselines3 agents as the lab's agents: `rlab eval`, `rlab bench rl-attack`, `rlab plot returns`.

A model saved by SB3's `model.save` (PPO, A2C, DQN, SAC, TD3; DDPG loads as the TD3 it is) becomes an
`SB3Agent`: a torch module that maps raw observations to a distribution, the agent the lab's own
evaluation and observation attacks consume (rlab.rl.evaluation, envs.observation_attacks). It runs the
SB3 policy's own network, so the attacks differentiate through it:

    PPO / A2C, Discrete:  Categorical(logits = action_net(mlp_extractor(s)))     SB3's own distribution
    PPO / A2C, Box:       Normal(mu(s), exp(log_std)), played at its mean, clipped to the Box
    DQN:                  Categorical(logits = Q(s, .))   (Q plays the logits; its argmax is SB3's greedy action)
    SAC / TD3:            a point mass at the deterministic action low + (tanh(mu(s)) + 1) (high - low) / 2

Observations are normalised inside the agent with the VecNormalize statistics saved beside the model
(s -> clip((s - mean) / sqrt(var + eps), -clip_obs, clip_obs), in float64 like SB3, then float32), so an
attacker perturbs the raw observation the env emits, as for the lab's agents.

Where a model comes from (rl-baselines3-zoo, Raffin 2020, exp_manager.py and utils.py):

    logs/<algo>/<Env>_<n>/<Env>.zip                   the final model (also best_model.zip, rl_model_<k>_steps.zip)
    logs/<algo>/<Env>_<n>/<Env>/args.yml, config.yml  the command line (its `env`) and the hyperparameters
    logs/<algo>/<Env>_<n>/<Env>/vecnormalize.pkl      VecNormalize statistics, when trained with `normalize`
    logs/<algo>/<Env>_<n>/<i>.monitor.csv             training episodes (what `rlab plot returns` draws)
    logs/<algo>/<Env>_<n>/evaluations.npz             the EvalCallback's returns (drawn where no monitor.csv is)

A plain `model.save("x.zip")` works too, with `vecnormalize.pkl` beside it and the env id from `--env`,
a Monitor's monitor.csv beside it, or a file name that is an env id (`CartPole-v1.zip`).

SB3 loads its files with pickle (spaces, VecNormalize): load only models you trust. The lab's own
checkpoints stay data-only (torch.load(weights_only=True)).
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent

from rlab.errors import UserError

SB3_ALGOS = ("ppo", "a2c", "dqn", "sac", "td3", "ddpg")
MONITOR_GLOB = "*monitor.csv"  # SB3's Monitor: "monitor.csv", make_vec_env(monitor_dir=...): "<rank>.monitor.csv"


class PointMass(Distribution):
    """delta(a - loc): a deterministic actor's "distribution" (../shared/DESIGN.md); its mean is the action."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, loc: Tensor):
        self.loc = loc
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.loc.expand(self._extended_shape(sample_shape))


class SB3Agent(nn.Module):
    """A Stable-Baselines3 policy with the lab agent's interface: `pi(obs) -> Distribution`, `sample`, `env_action`.

    obs are raw env observations (N, obs_dim); the saved VecNormalize statistics (if any) apply inside.
    """

    def __init__(self, policy: nn.Module, algo: str, action_space: gym.Space, obs_rms: Any = None,
                 epsilon: float = 1e-8, clip_obs: float = 10.0):
        super().__init__()
        self.policy, self.algo = policy, algo
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.normalize_obs = obs_rms is not None
        self.epsilon, self.clip_obs = float(epsilon), float(clip_obs)
        if self.normalize_obs:
            self.register_buffer("obs_mean", torch.as_tensor(np.asarray(obs_rms.mean), dtype=torch.float64))
            self.register_buffer("obs_var", torch.as_tensor(np.asarray(obs_rms.var), dtype=torch.float64))
        if not self.discrete:
            self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32))

    def normalize(self, obs: Tensor) -> Tensor:
        """VecNormalize's obs transform, differentiable: clip((s - mean) / sqrt(var + eps), -c, c) as float32."""
        if not self.normalize_obs:
            return obs.float()
        x = (obs.double() - self.obs_mean) / torch.sqrt(self.obs_var + self.epsilon)
        return x.clamp(-self.clip_obs, self.clip_obs).float()

    def unscale(self, action: Tensor) -> Tensor:
        """[-1, 1] (tanh) -> [low, high]: SB3's `unscale_action` for squashed actors."""
        return self.action_low + 0.5 * (action + 1.0) * (self.action_high - self.action_low)

    def pi(self, obs: Tensor) -> Distribution:
        x = self.normalize(obs)
        if self.algo == "dqn":
            return Categorical(logits=self.policy.q_net(x), validate_args=False)
        if self.algo in ("ppo", "a2c"):
            dist = self.policy.get_distribution(x).distribution
            return dist if self.discrete else Independent(dist, 1, validate_args=False)
        return PointMass(self.unscale(self.policy.actor(x, deterministic=True) if self.algo == "sac"
                                      else self.policy.actor(x)))

    def forward(self, obs: Tensor) -> Distribution:
        return self.pi(obs)

    @torch.no_grad()
    def sample(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        """(action, log pi(a|s)): SB3's predict. Deterministic: argmax / mean / the actor's action; else a draw
        (SAC: its squashed Gaussian; TD3 and DDPG act without noise at test time, as SB3's predict does)."""
        if self.algo == "sac" and not deterministic:
            action = self.unscale(self.policy.actor(self.normalize(obs), deterministic=False))
            return action, torch.full(action.shape[:1], math.nan, device=action.device)
        dist = self.pi(obs)
        if isinstance(dist, Categorical):
            action = dist.logits.argmax(-1) if deterministic else dist.sample()
        else:
            action = dist.mean if deterministic else dist.sample()
        logp = dist.log_prob(action) if not isinstance(dist, PointMass) else action.new_zeros(action.shape[:1])
        return action, logp

    def env_action(self, action: Tensor) -> np.ndarray:
        """What the env receives: the action index, or the action clipped to the Box (as SB3's predict clips)."""
        if self.discrete:
            return action.cpu().numpy()
        return torch.maximum(torch.minimum(action, self.action_high), self.action_low).cpu().numpy()


# ----------------------------------------------------------------------------- finding models and their env


def model_path(path: str | Path) -> Path | None:
    """The SB3 model a command-line path names: a .zip, or a zoo experiment folder `<Env>_<n>/` holding
    `<Env>.zip` (or a single .zip); None for anything else (e.g. a run folder of `rlab train`)."""
    p = Path(path)
    if p.suffix == ".zip":
        return p
    if not p.is_dir() or (p / "config.json").is_file():
        return None
    stem, _, run = p.name.rpartition("_")
    if stem and run.isdigit() and (p / f"{stem}.zip").is_file():
        return p / f"{stem}.zip"
    zips = sorted(p.glob("*.zip"))
    return zips[0] if len(zips) == 1 else None


def zoo_yaml(path: Path) -> dict[str, Any]:
    """A zoo args.yml / config.yml as a dict. The zoo dumps OrderedDicts, which yaml's safe loader refuses;
    this one reads that one tag (a list of [key, value] pairs) and nothing else that would run code."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
        (pairs,) = loader.construct_sequence(node, deep=True) or [[]]
        return {k: v for k, v in pairs}

    Loader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", ordered_dict)
    try:
        data = yaml.load(path.read_text(), Loader=Loader)
    except (yaml.YAMLError, ValueError, TypeError) as e:
        raise UserError(f"{path} is not a readable rl-baselines3-zoo file: {str(e).splitlines()[0]}") from None
    return data if isinstance(data, dict) else {}


def _params_folder(zip_path: Path) -> Path | None:
    """The zoo's params folder of a model: `<Env>/` beside it, holding args.yml / config.yml."""
    named = zip_path.parent / zip_path.stem
    if (named / "args.yml").is_file() or (named / "config.yml").is_file():
        return named
    found = [p.parent for p in sorted(zip_path.parent.glob("*/args.yml"))]
    return found[0] if len(found) == 1 else None


def monitor_env_id(folder: Path) -> str | None:
    """The env id in the JSON header line of a Monitor file in `folder` (`#{"t_start": ..., "env_id": ...}`)."""
    for monitor in sorted(folder.glob(MONITOR_GLOB)):
        with open(monitor) as f:
            first = f.readline()
        try:
            env_id = json.loads(first.lstrip("#")).get("env_id") if first.startswith("#") else None
        except json.JSONDecodeError:
            env_id = None
        if env_id:
            return str(env_id)
    return None


def infer_env_id(zip_path: Path) -> str | None:
    """The model's env: the zoo's args.yml `env`, else a Monitor header beside it, else a file name that is an id."""
    params = _params_folder(zip_path)
    if params is not None and (params / "args.yml").is_file():
        env_id = zoo_yaml(params / "args.yml").get("env")
        if env_id:
            return str(env_id)
    env_id = monitor_env_id(zip_path.parent)
    if env_id:
        return env_id
    return zip_path.stem if zip_path.stem in gym.registry else None


def _sb3_data(zip_path: Path) -> dict[str, Any]:
    if not zip_path.is_file():
        raise UserError(f"no such file: {zip_path}")
    try:
        with zipfile.ZipFile(zip_path) as z:
            names = set(z.namelist())
            data = json.loads(z.read("data")) if {"data", "policy.pth"} <= names else None
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("policy_class"), dict):
        raise UserError(f"{zip_path} is not a Stable-Baselines3 model (a .zip from model.save holds 'data' and "
                        f"'policy.pth')")
    return data


def algo_of(zip_path: Path) -> str:
    """ppo, a2c, dqn, sac, td3 or ddpg, from the saved policy class's module and the algorithm's saved fields."""
    data = _sb3_data(zip_path)
    module = str(data["policy_class"].get("__module__", "?"))
    family = {"stable_baselines3.common.policies": "actor-critic", "stable_baselines3.dqn.policies": "dqn",
              "stable_baselines3.sac.policies": "sac", "stable_baselines3.td3.policies": "td3"}.get(module)
    if family is None:
        raise UserError(f"{zip_path} holds a policy from {module} (e.g. sb3-contrib or a custom policy); supported: "
                        f"Stable-Baselines3's {', '.join(a.upper() for a in SB3_ALGOS)} with their own policies")
    if family == "actor-critic":
        return "ppo" if "clip_range" in data else "a2c"
    if family == "td3" and data.get("policy_delay") == 1 and data.get("target_policy_noise") == 0.0:
        return "ddpg"
    return family


def _vecnormalize(zip_path: Path) -> tuple[Path | None, dict[str, Any]]:
    """(vecnormalize.pkl beside the model or in its zoo params folder, the zoo's config.yml); refuses a zoo
    config whose env preparation the lab would skip (normalize without statistics, wrappers, frame stacks)."""
    params = _params_folder(zip_path)
    config = zoo_yaml(params / "config.yml") if params is not None and (params / "config.yml").is_file() else {}
    candidates = [zip_path.parent / "vecnormalize.pkl", *([params / "vecnormalize.pkl"] if params else [])]
    stats = next((p for p in candidates if p.is_file()), None)
    if config.get("normalize") and stats is None:
        raise UserError(f"{params / 'config.yml'} trains with VecNormalize but no vecnormalize.pkl is beside "
                        f"{zip_path} or in {params}: without its statistics the policy sees other inputs")
    for key in ("env_wrapper", "frame_stack", "vec_env_wrapper"):
        if config.get(key):
            raise UserError(f"{params / 'config.yml'} sets {key}: {config[key]}; the lab plays the plain env, "
                            f"so this model would see other observations (supported: no wrappers, VecNormalize)")
    return stats, config


def _load_obs_rms(stats: Path) -> tuple[Any, float, float]:
    """(obs_rms or None when norm_obs is off, epsilon, clip_obs) of a saved VecNormalize."""
    try:
        with open(stats, "rb") as f:
            vec_normalize = pickle.load(f)
        obs_rms, norm_obs = vec_normalize.obs_rms, vec_normalize.norm_obs
        epsilon, clip_obs = vec_normalize.epsilon, vec_normalize.clip_obs
    except Exception as e:  # noqa: BLE001 - any unpickling failure is one bad file
        raise UserError(f"{stats} is not a VecNormalize file of Stable-Baselines3 "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(obs_rms, dict):
        raise UserError(f"{stats} normalises dict observations; supported: flat Box observations")
    return (obs_rms if norm_obs else None), float(epsilon), float(clip_obs)


def load_sb3_agent(path: str | Path, env_id: str | None = None,
                   device: str | torch.device = "cpu") -> tuple[SB3Agent, dict[str, Any]]:
    """(SB3Agent in eval mode, options) for a model file or zoo experiment folder; options["env"] is its env."""
    from rlab.rl.environments import make_envs

    zip_path = model_path(path)
    if zip_path is None:
        raise UserError(f"{path} is not a Stable-Baselines3 model (.zip) or an rl-baselines3-zoo experiment folder")
    algo = algo_of(zip_path)
    env_id = env_id or infer_env_id(zip_path)
    if not env_id:
        raise UserError(f"cannot tell which environment {zip_path} was trained on (no zoo args.yml, no monitor.csv "
                        f"beside it, and {zip_path.stem!r} is not an env id); give --env ID")
    envs = make_envs(env_id, 1)  # an unknown id or a missing env dependency: one line
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    envs.close()
    stats, _ = _vecnormalize(zip_path)
    import stable_baselines3 as sb3

    cls = {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN, "sac": sb3.SAC, "td3": sb3.TD3, "ddpg": sb3.DDPG}[algo]
    # schedules are pickled closures that may not load on another Python; evaluation needs none of them
    custom = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0,
              "exploration_schedule": lambda _: 0.0}
    try:
        model = cls.load(zip_path, device=torch.device(device), custom_objects=custom)
    except Exception as e:  # noqa: BLE001 - a zip SB3 cannot read is one bad file
        raise UserError(f"Stable-Baselines3 {sb3.__version__} cannot load {zip_path} as {algo.upper()} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(model.observation_space, gym.spaces.Box) or len(model.observation_space.shape) != 1:
        raise UserError(f"{zip_path} takes {model.observation_space} observations; supported: flat Box observations")
    if obs_space.shape != model.observation_space.shape or type(action_space) is not type(model.action_space) or \
            getattr(action_space, "shape", None) != getattr(model.action_space, "shape", None) or \
            getattr(action_space, "n", None) != getattr(model.action_space, "n", None):
        raise UserError(f"{zip_path} was trained on observations {model.observation_space.shape} and actions "
                        f"{model.action_space}, but {env_id} has {obs_space.shape} and {action_space}; give the "
                        f"model's --env")
    if algo in ("ppo", "a2c") and getattr(model.policy, "squash_output", False):
        raise UserError(f"{zip_path} squashes its gSDE actions (squash_output=True); supported: unsquashed "
                        f"PPO/A2C policies")
    obs_rms, epsilon, clip_obs = _load_obs_rms(stats) if stats is not None else (None, 1e-8, 10.0)
    if obs_rms is not None and tuple(np.shape(obs_rms.mean)) != obs_space.shape:
        raise UserError(f"{stats} holds statistics of shape {np.shape(obs_rms.mean)}, {env_id} observations are "
                        f"{obs_space.shape}")
    agent = SB3Agent(model.policy, algo, model.action_space, obs_rms, epsilon, clip_obs).to(device)
    agent.eval()
    options = {"env": env_id, "algo": f"sb3-{algo}", "variant": f"SB3 {algo.upper()}", "source": str(zip_path),
               "vecnormalize": str(stats) if stats is not None else None, "sb3_version": sb3.__version__}
    return agent, options


# ----------------------------------------------------------------------------- training curves for `rlab plot returns`


def log_folders(path: str | Path) -> list[Path]:
    """Folders at or below `path` that hold SB3 training logs (Monitor files or evaluations.npz); a .zip names its
    own folder. Run folders of the lab (config.json) are not among them."""
    p = Path(path)
    if p.suffix == ".zip" and p.is_file():
        p = p.parent
    if not p.is_dir():
        return []
    candidates = {m.parent for m in p.rglob(MONITOR_GLOB)} | {e.parent for e in p.rglob("evaluations.npz")}
    return sorted(c for c in candidates if not (c / "config.json").is_file())


def _zoo_algo(folder: Path) -> str | None:
    zips = sorted(folder.glob("*.zip"))
    params = _params_folder(zips[0]) if zips else None
    if params is not None and (params / "args.yml").is_file():
        algo = zoo_yaml(params / "args.yml").get("algo")
        if algo:
            return str(algo)
    if folder.parent.name in SB3_ALGOS:
        return folder.parent.name
    for z in zips:
        try:
            return algo_of(z)
        except UserError:
            continue
    return None


def training_curve(folder: Path, x_axis: str = "steps") -> tuple[str, str, np.ndarray, np.ndarray]:
    """(label, env id, x, episode returns) of one SB3 log folder.

    From its Monitor files (training episodes, as the lab's charts/episode_return): all envs' episodes in the
    order they ended, x = cumulative episode lengths (env steps, all envs together) or the wall seconds
    since the first env started. Without Monitor files, from evaluations.npz: the mean evaluation return at
    each evaluation's timestep (steps only: the file keeps no clock).
    """
    algo = _zoo_algo(folder)
    label = f"SB3 {algo.upper()}" if algo else "SB3"
    monitors = sorted(folder.glob(MONITOR_GLOB))
    if monitors:
        episodes, starts = [], []
        for monitor in monitors:
            with open(monitor) as f:
                header = f.readline()
                try:
                    t_start = float(json.loads(header.lstrip("#")).get("t_start", 0.0))
                except (json.JSONDecodeError, AttributeError, ValueError):
                    raise UserError(f"{monitor} is not a Monitor file of Stable-Baselines3 (no JSON header line)") from None
                starts.append(t_start)
                try:
                    episodes += [(t_start + float(r["t"]), float(r["r"]), int(float(r["l"]))) for r in csv.DictReader(f)]
                except (KeyError, ValueError, TypeError):
                    raise UserError(f"{monitor} is not a Monitor file of Stable-Baselines3 (needs columns r, l, t)") from None
        episodes.sort()
        ends = np.array([e[0] for e in episodes]) - min(starts)
        returns = np.array([e[1] for e in episodes], dtype=float)
        x = np.cumsum([e[2] for e in episodes]).astype(float) if x_axis == "steps" else ends
        env_id = monitor_env_id(folder) or ""
        return label, env_id, x, returns
    npz = folder / "evaluations.npz"
    if x_axis != "steps":
        raise UserError(f"{npz} keeps no clock; plot it with --x steps (Monitor files give wall time)")
    try:
        with np.load(npz) as data:
            timesteps, results = np.asarray(data["timesteps"], dtype=float), np.asarray(data["results"], dtype=float)
    except (KeyError, ValueError, OSError):
        raise UserError(f"{npz} is not an EvalCallback file of Stable-Baselines3 (needs timesteps and results)") from None
    zips = sorted(folder.glob("*.zip"))
    env_id = (infer_env_id(zips[0]) if zips else None) or ""
    return f"{label} (eval)", env_id, timesteps, results.reshape(len(timesteps), -1).mean(1)
