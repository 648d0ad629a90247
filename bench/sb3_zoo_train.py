"""Train a Stable-Baselines3 agent the way rl-baselines3-zoo does, into the zoo's folder layout.

A stand-in for `python -m rl_zoo3.train --algo ALGO --env ENV` (rl_zoo3 is not a dependency of the lab):
the zoo's tuned hyperparameters (bench/rl_vs_sb3.py `zoo_hyperparams`), `make_vec_env` with a Monitor
per env, an EvalCallback every `--eval-every` env steps, and the files where rl_zoo3's ExperimentManager
puts them (Raffin, 2020, rl-baselines3-zoo, exp_manager.py):

    OUT/<algo>/<Env>_<n>/<Env>.zip             model.save
    OUT/<algo>/<Env>_<n>/<Env>/config.yml      hyperparameters, args.yml: the command line (env, algo, seed)
    OUT/<algo>/<Env>_<n>/<Env>/vecnormalize.pkl   with --normalize (VecNormalize statistics)
    OUT/<algo>/<Env>_<n>/<i>.monitor.csv       training episodes of env i (reward r, length l, time t)
    OUT/<algo>/<Env>_<n>/evaluations.npz       the EvalCallback's timesteps / results / ep_lengths

Such a folder is what `rlab eval`, `rlab bench rl-attack` and `rlab plot returns` read (rlab/rl/sb3.py).

    python bench/sb3_zoo_train.py --algo ppo --env CartPole-v1 --out runs/zoo     # 1e5 steps, the zoo's budget
    python bench/sb3_zoo_train.py --smoke      # PPO, 4,096 steps, into runs/bench/sb3_zoo_train__.../logs
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ZOO_BUDGETS = {("ppo", "CartPole-v1"): 100_000, ("a2c", "CartPole-v1"): 500_000, ("dqn", "CartPole-v1"): 50_000}
# --smoke: the zoo's CartPole PPO with a constant learning rate and 10 epochs, for 4,096 steps (~3 CPU s)
SMOKE_PPO = dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=10, learning_rate=1e-3)


def train_zoo_agent(algo: str, env_id: str, out: str | Path, steps: int, seed: int = 0, normalize: bool = False,
                    eval_every: int = 10_000, eval_episodes: int = 5, hyperparams: dict | None = None) -> Path:
    """Train `algo` on `env_id` and save it in rl-baselines3-zoo's layout under `out`; returns the experiment folder."""
    import torch
    import yaml
    from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from rl_vs_sb3 import zoo_hyperparams

    torch.set_num_threads(1)
    kwargs = dict(hyperparams) if hyperparams is not None else zoo_hyperparams(algo, env_id)
    n_envs = kwargs.pop("n_envs", 1)
    log_path = Path(out) / algo
    runs = [int(p.name.rsplit("_", 1)[1]) for p in log_path.glob(f"{env_id}_*") if p.name.rsplit("_", 1)[1].isdigit()]
    save_path = log_path / f"{env_id}_{max(runs, default=0) + 1}"
    params_path = save_path / env_id
    params_path.mkdir(parents=True)
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed, monitor_dir=str(save_path))
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 1000)
    if normalize:
        env = VecNormalize(env, gamma=kwargs.get("gamma", 0.99))
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    cls = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "sac": SAC, "td3": TD3}[algo]
    model = cls("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **kwargs)
    callback = EvalCallback(eval_env, n_eval_episodes=eval_episodes, eval_freq=max(eval_every // n_envs, 1),
                            log_path=str(save_path), best_model_save_path=None, deterministic=True, verbose=0)
    model.learn(steps, callback=callback)
    model.save(save_path / env_id)
    if normalize:
        env.save(str(params_path / "vecnormalize.pkl"))
    saved = {k: (repr(v) if not isinstance(v, (int, float, str, bool, list)) else v) for k, v in kwargs.items()}
    config = OrderedDict(sorted({**saved, "n_envs": n_envs, "n_timesteps": steps, "policy": "MlpPolicy",
                                 **({"normalize": True} if normalize else {})}.items()))
    with open(params_path / "config.yml", "w") as f:
        yaml.dump(config, f)  # the zoo dumps OrderedDicts: a python/object tag that only its UnsafeLoader reads
    with open(params_path / "args.yml", "w") as f:
        yaml.dump(OrderedDict([("algo", algo), ("env", env_id), ("n_timesteps", steps), ("seed", seed)]), f)
    env.close()
    eval_env.close()
    return save_path


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="ppo", choices=["ppo", "a2c", "dqn"])
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--steps", type=int, default=0, help="env steps (0: the zoo's n_timesteps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--normalize", action="store_true", help="VecNormalize the observations (saved as vecnormalize.pkl)")
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--out", default="", help="the zoo's logs/ folder (default: a new runs/bench/sb3_zoo_train__... folder)")
    p.add_argument("--smoke", action="store_true", help="PPO on CartPole-v1, 4,096 steps (SMOKE_PPO)")
    args = p.parse_args(argv)
    if args.smoke:
        args.algo, args.env, args.steps, args.eval_every = "ppo", "CartPole-v1", 4096, 2048
    out = args.out
    if not out:
        from rlab.runs import RunDir

        out = RunDir.create("bench", f"sb3_zoo_train__{args.env}", args.seed, vars(args)).path / "logs"
    steps = args.steps or ZOO_BUDGETS.get((args.algo, args.env))
    if not steps:
        raise SystemExit(f"give --steps: no zoo budget here for {args.algo} on {args.env}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    path = train_zoo_agent(args.algo, args.env, out, steps, args.seed, args.normalize, args.eval_every,
                           hyperparams=SMOKE_PPO if args.smoke else None)
    print(path)
    return path


if __name__ == "__main__":
    main()
