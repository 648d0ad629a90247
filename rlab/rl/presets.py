"""Tuned hyperparameters per (environment, algorithm); `rlab train --env ID` picks them.

PPO and A2C follow rl-baselines3-zoo (Raffin, 2020, hyperparams/ppo.yml, a2c.yml)
where it has an entry, so the SB3 comparison is like for like (except PPO on
LunarLander-v3, retuned here for fewer, larger minibatches: see its entry); VPG and the
actor-critic follow Spinning Up's defaults (large batches, Adam). Any option
given on the command line wins over the preset; None in TrainConfig means
"take the preset".
"""

from __future__ import annotations

from typing import Any

GENERIC: dict[str, dict[str, Any]] = {
    "vpg": dict(steps=200_000, n_envs=8, n_steps=512, lr=5e-3, gamma=0.99, returns="discounted", baseline="standardize",
                epochs=1, minibatch_size=0, value_epochs=10, ent_coef=0.0, max_grad_norm=0.0, norm_adv=False,
                anneal_lr=False, obs_norm=True, hidden=[64, 64]),
    "ac": dict(steps=200_000, n_envs=8, n_steps=128, lr=1e-3, gamma=0.99, critic="td", epochs=1, minibatch_size=0,
               vf_coef=0.5, ent_coef=0.0, max_grad_norm=0.5, norm_adv=True, anneal_lr=False, obs_norm=True,
               hidden=[64, 64]),
    "a2c": dict(steps=500_000, n_envs=8, n_steps=5, lr=7e-4, gamma=0.99, gae_lambda=1.0, epochs=1, minibatch_size=0,
                vf_coef=0.5, ent_coef=0.0, max_grad_norm=0.5, norm_adv=False, anneal_lr=False, obs_norm=True,
                hidden=[64, 64]),
    "ppo": dict(steps=1_000_000, n_envs=8, n_steps=256, lr=3e-4, gamma=0.99, gae_lambda=0.95, epochs=10,
                minibatch_size=256, clip=0.2, vf_coef=0.5, ent_coef=0.0, max_grad_norm=0.5, norm_adv=True,
                anneal_lr=True, obs_norm=True, hidden=[64, 64]),
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "CartPole-v1": {
        # zoo: n_envs 8, n_steps 32, batch 256, gae 0.8, gamma 0.98, n_epochs 20, ent 0, lr lin 1e-3, clip lin 0.2
        "ppo": dict(steps=100_000, n_envs=8, n_steps=32, minibatch_size=256, gae_lambda=0.8, gamma=0.98, epochs=20,
                    ent_coef=0.0, lr=1e-3, anneal_lr=True, clip=0.2, obs_norm=False),
        "a2c": dict(steps=500_000, n_envs=8, n_steps=5, gamma=0.99, gae_lambda=1.0, ent_coef=0.0, lr=7e-4,
                    obs_norm=False),
        # measured at 30k steps: lr 1e-2 learns ~2x faster than 5e-3; a one-step TD critic with 128-step
        # rollouts makes too few updates to learn at all, 16 steps per env does (32 collapsed on seed 0)
        "vpg": dict(steps=200_000, n_envs=8, n_steps=512, lr=1e-2),
        "ac": dict(steps=200_000, n_envs=8, n_steps=16, lr=1e-3, gamma=0.99),
    },
    "Acrobot-v1": {
        "ppo": dict(steps=1_000_000, n_envs=16, n_steps=256, gae_lambda=0.94, gamma=0.99, epochs=4, minibatch_size=256,
                    ent_coef=0.0, obs_norm=True),
        "a2c": dict(steps=500_000, n_envs=16, n_steps=5, ent_coef=0.0, obs_norm=True),
    },
    "Pendulum-v1": {
        "ppo": dict(steps=200_000, n_envs=4, n_steps=1024, gae_lambda=0.95, gamma=0.9, epochs=10, minibatch_size=64,
                    ent_coef=0.0, lr=1e-3, clip=0.2, obs_norm=True, log_std_init=-0.5),
        "a2c": dict(steps=1_000_000, n_envs=8, n_steps=8, gamma=0.9, gae_lambda=0.9, lr=7e-4, obs_norm=True),
    },
    "LunarLander-v3": {
        # zoo: n_envs 16, n_steps 1024, batch 64, gae 0.98, gamma 0.999, n_epochs 4, ent 0.01, 1e6 steps (SB3 needs
        # ~557k steps to 200, 1,024 gradient steps per rollout). Here zoo's gamma/gae/ent with 16x256 rollouts,
        # minibatch 256, 10 epochs, lr 1e-3: 200 reached after 115k-459k steps on seeds 0-7 (median 221k), at ~4x
        # the env steps/s; fewer updates (minibatch 512-1024 or 4 epochs) stayed below 200 at 600k.
        "ppo": dict(steps=1_000_000, n_envs=16, n_steps=256, minibatch_size=256, gae_lambda=0.98, gamma=0.999, epochs=10,
                    ent_coef=0.01, lr=1e-3, anneal_lr=False, obs_norm=False),
        # zoo: n_envs 8, gamma 0.995, n_steps 5, lr lin 0.00083, ent 1e-5
        "a2c": dict(steps=1_000_000, n_envs=8, n_steps=5, gamma=0.995, gae_lambda=1.0, lr=8.3e-4, anneal_lr=True,
                    ent_coef=1e-5, obs_norm=False),
        "vpg": dict(steps=1_000_000, n_envs=8, n_steps=1000, lr=3e-3),
        "ac": dict(steps=1_000_000, n_envs=8, n_steps=256, lr=7e-4),
    },
}
PRESETS["rlab/TorchCartPole-v1"] = PRESETS["CartPole-v1"]

# Fields a preset may set (every other TrainConfig field is the user's).
PRESET_FIELDS = ("steps", "n_envs", "n_steps", "lr", "gamma", "returns", "baseline", "critic", "gae_lambda", "epochs",
                 "minibatch_size", "clip", "vf_coef", "ent_coef", "max_grad_norm", "norm_adv", "anneal_lr", "obs_norm",
                 "hidden", "value_epochs", "log_std_init")

DEFAULTS: dict[str, Any] = dict(returns="discounted", baseline="standardize", critic="td", gae_lambda=0.95, epochs=1,
                                minibatch_size=0, clip=0.2, vf_coef=0.5, ent_coef=0.0, max_grad_norm=0.5, norm_adv=True,
                                anneal_lr=False, obs_norm=True, hidden=[64, 64], value_epochs=10, log_std_init=0.0)


def preset(env_id: str, algo: str) -> dict[str, Any]:
    """Every preset field for (env, algo): env-specific values over the algorithm's generic ones."""
    return {**DEFAULTS, **GENERIC[algo], **PRESETS.get(env_id, {}).get(algo, {})}
