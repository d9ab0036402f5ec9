"""The trainer's typed config schema: defaults, validation, and one-line errors.

Imports no torch: the CLI uses it to validate profiles before anything starts.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key path(s) and value(s)."""


@dataclass(frozen=True)
class Key:
    """One config key: its type, default and help; `choices`, `nullable` and range as checks."""

    type: str  # int | float | bool | str | dict | list | int|auto
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False


SCHEMA: dict[str, dict[str, Key]] = {
    "env": {
        "name": Key("str", "gym:CartPole-v1", "environment: gym:<gymnasium id> or puffer:<built-in name>"),
        "num_envs": Key("int", 1024, "parallel environments (agents) stepped as one batch", min=1),
        "kwargs": Key("dict", {}, "keyword arguments passed to the environment's constructor"),
        "reward_clip": Key("float", 1.0, "rewards are clamped to [-c, c] before storage; null keeps them raw",
                           nullable=True, min=0, min_exclusive=True),
    },
    "policy": {
        "hidden_size": Key("int", 128, "width of the MLP encoder", min=1),
        "num_layers": Key("int", 1, "linear layers in the encoder", min=1),
        "activation": Key("str", "gelu", "encoder activation", choices=("gelu", "relu", "tanh")),
        "lstm": Key("bool", False, "add an LSTM after the encoder (state per env, BPTT over each segment)"),
        "lstm_hidden_size": Key("int", 128, "LSTM width (when policy.lstm)", min=1),
    },
    "train": {
        "seed": Key("int", 42, "seed of torch, numpy, python and the environments", min=0),
        "total_timesteps": Key("int", 10_000_000, "agent steps to train for", min=1),
        "stop_at_steps": Key("int", None, "stop (completed) after this many agent steps; the schedules (LR anneal, "
                             "prio_beta) still run over total_timesteps; null = train to total_timesteps",
                             nullable=True, min=1),
        "device": Key("str", "auto", "auto picks CUDA when available", choices=("auto", "cpu", "cuda")),
        "torch_deterministic": Key("bool", True, "deterministic torch algorithms (exact seeds and resume on CPU)"),
        "world_size": Key("int", 1, "ranks (processes) of one run through torchrun (`puffctl train --nproc N`); "
                          "each steps its own env.num_envs envs with seed + rank, batch sizes are per rank, "
                          "gradients are averaged (docs/scale.md)", min=1),
        "cpu_threads": Key("int", 1, "torch CPU threads; null uses every core (slower on small boxes: see docs/trainer.md)",
                           nullable=True, min=1),
        "precision": Key("str", "float32", "float32, or bfloat16 autocast of the policy's matmuls (LSTM runs about 1.8x faster on CPUs with bf16)",
                         choices=("float32", "bfloat16")),
        "cuda_launch_blocking": Key("bool", False, "debug: set CUDA_LAUNCH_BLOCKING=1 so CUDA errors surface where they happen"),
        "optimizer": Key("str", "muon", "muon (2-D weights; Adam for the rest) or adam", choices=("adam", "muon")),
        "learning_rate": Key("float", 0.015, "optimizer learning rate", min=0, min_exclusive=True),
        "anneal_lr": Key("bool", True, "cosine-anneal the learning rate over training"),
        "min_lr_ratio": Key("float", 0.0, "the annealed learning rate ends at learning_rate * min_lr_ratio", min=0, max=1),
        "adam_beta1": Key("float", 0.95, "Adam beta1", min=0, max=1),
        "adam_beta2": Key("float", 0.999, "Adam beta2", min=0, max=1),
        "adam_eps": Key("float", 1e-12, "Adam epsilon", min=0),
        "muon_momentum": Key("float", 0.95, "Muon momentum", min=0, max=1),
        "gamma": Key("float", 0.995, "discount factor", min=0, max=1),
        "gae_lambda": Key("float", 0.90, "GAE / puff advantage lambda", min=0, max=1),
        "update_epochs": Key("int", 1, "passes over each batch (minibatches = update_epochs * batch / minibatch)", min=1),
        "clip_coef": Key("float", 0.2, "PPO ratio clip", min=0),
        "vf_coef": Key("float", 2.0, "value loss coefficient", min=0),
        "vf_clip_coef": Key("float", 0.2, "value clip around the behaviour values; null turns value clipping off",
                            nullable=True, min=0),
        "ent_coef": Key("float", 0.001, "entropy bonus coefficient", min=0),
        "max_grad_norm": Key("float", 1.5, "gradient norm clip", min=0, min_exclusive=True),
        "bptt_horizon": Key("int", 64, "segment length: one buffer row holds this many consecutive steps of one agent", min=1),
        "batch_size": Key("int|auto", "auto", "agent steps per epoch; auto = env.num_envs * train.bptt_horizon", min=1),
        "minibatch_size": Key("int", 8192, "agent steps per gradient step (a multiple of bptt_horizon)", min=1),
        "advantage": Key("str", "puff", "advantage estimator", choices=("puff", "gae", "vtrace")),
        "vtrace_rho_clip": Key("float", 1.0, "V-trace / puff rho clip", min=0),
        "vtrace_c_clip": Key("float", 1.0, "V-trace / puff c clip", min=0),
        "vtrace_pg_rho_clip": Key("float", None, "V-trace rho clip of the policy advantages only; null = vtrace_rho_clip",
                                  nullable=True, min=0),
        "replay_factor": Key("float", 0.0, "retained rows kept across phases, as a fraction of the batch's rows (0 = on-policy only)",
                             min=0),
        "replay_max_age": Key("int", None, "training phases a retained row may stay; null = no limit", nullable=True, min=1),
        "replay_value_weight": Key("float", 1.0, "value-loss weight of retained rows (0 masks them out of the value loss)",
                                   min=0),
        "e3b_coef": Key("float", 0.0, "E3B: scale of the intrinsic reward (0 = off; 1.0 in the paper)", min=0),
        "e3b_ridge": Key("float", 0.1, "E3B: the covariance starts at ridge * I (added once per episode)",
                         min=0, min_exclusive=True),
        "e3b_decay": Key("float", None, "E3B: decay the covariance each step (C <- decay C + phi phi^T, as first "
                         "streamed) instead of resetting it per episode; null = reset", nullable=True, min=0,
                         max=1, min_exclusive=True),
        "e3b_batch": Key("str", "auto", "E3B: compute the bonuses once per collected segment (batched GEMMs) or "
                         "every step; auto = segment, or step with e3b_decay (which has no segment form)",
                         choices=("auto", "segment", "step")),
        "e3b_norm": Key("bool", True, "E3B: divide the bonus by its running std before e3b_coef"),
        "e3b_embedding": Key("str", "hidden", "E3B: embed with the policy's hidden state (detached) or an "
                             "inverse-dynamics encoder trained with its own loss",
                             choices=("hidden", "inverse_dynamics")),
        "e3b_dim": Key("int", 128, "E3B: width of the inverse-dynamics embedding", min=1),
        "e3b_id_coef": Key("float", 1.0, "E3B: coefficient of the inverse-dynamics loss", min=0),
        "diayn_coef": Key("float", 0.0, "DIAYN: coefficient of the discriminator loss (or reward) (0 = off)", min=0),
        "diayn_archive": Key("int", 8, "DIAYN: number of skills K (chance accuracy 1/K)", min=1),
        "diayn_skills": Key("str", "segment", "DIAYN: draw a skill per segment (as streamed) or per episode",
                            choices=("segment", "episode")),
        "diayn_every": Key("int", 1, "DIAYN: the discriminator reads every Nth step of a segment", min=1),
        "diayn_features": Key("str", "taken", "DIAYN: the discriminator reads the taken action's log-prob, the "
                              "full log_softmax, or the rest: the non-greedy actions' log-probs renormalised among "
                              "themselves and sorted", choices=("taken", "full", "rest")),
        "diayn_mode": Key("str", "loss", "DIAYN: cross-entropy in the loss (gradients into the policy) or the "
                          "reward log q(z given the segment) - log p(z)", choices=("loss", "reward")),
        "diayn_stop_grad": Key("bool", False, "DIAYN: cut the discriminator's gradient into the policy (the control "
                               "that must stay at chance)"),
        "diayn_pool": Key("str", "flat", "DIAYN: one discriminator net over the whole segment (flat), or one per "
                          "step whose evidence adds up over the segment (sum), each step weighed by the policy's "
                          "normalised entropy there (entropy)", choices=("flat", "sum", "entropy")),
        "diayn_margin": Key("float", 0.0, "DIAYN: push the policy only on segments whose discriminator "
                            "cross-entropy exceeds this (true skill's probability below exp(-margin)); 0 = all",
                            min=0),
        "diayn_warmup": Key("float", 0.0, "DIAYN: share of total_timesteps before the discriminator pushes the "
                            "policy (it learns from the start)", min=0, max=1),
        "prio_alpha": Key("float", 0.8, "prioritized segment sampling exponent (0 = uniform)", min=0),
        "prio_beta0": Key("float", 0.2, "importance-weight exponent at the start, annealed to 1", min=0, max=1),
        "norm_adv": Key("bool", True, "normalize advantages per minibatch"),
        "checkpoint_interval": Key("int", 200, "epochs between checkpoints; 0 = only at the end", min=0),
        "keep_checkpoints": Key("int", 3, "how many recent checkpoints to keep", min=1),
        "halt_on": Key("list", [], "watchdogs that end the run as failed instead of warning: kl, value_loss, grad_norm, sps",
                       choices=("kl", "value_loss", "grad_norm", "sps")),
    },
    "logger": {
        "backend": Key("str", "local", "local run store only, or also a Neptune sink", choices=("local", "neptune")),
        "progress_interval": Key("float", 0.5, "seconds between progress events (0 = every epoch)", min=0),
        "sps_window": Key("float", 5.0, "wall-clock window (s) for SPS and timings", min=0, min_exclusive=True),
        "neptune_project": Key("str", None, "Neptune project (workspace/name)", nullable=True),
    },
    "watchdog": {
        "enabled": Key("bool", True, "check each epoch's diagnostics and warn (trainer/watchdog.py)"),
        "kl_max": Key("float", 0.1, "kl: warn when approx_kl exceeds this", min=0, min_exclusive=True),
        "jump_factor": Key("float", 10.0, "value_loss, grad_norm: warn when one exceeds this many times its recent median",
                           min=1, min_exclusive=True),
        "window": Key("int", 20, "epochs in the recent median", min=5),
        "sps_ratio": Key("float", 0.3, "sps: warn when SPS falls below this fraction of its recent median", min=0, max=1),
    },
}

DEFAULTS: dict[str, dict[str, Any]] = {
    section: {name: copy.deepcopy(key.default) for name, key in keys_.items()}
    for section, keys_ in SCHEMA.items()
}


def keys() -> dict[str, tuple[str, Any, str]]:
    """Flat "section.key" -> (type name, default, help), for `puffctl profile show` and suggestions."""
    return {
        f"{section}.{name}": (key.type + ("|null" if key.nullable else ""), key.default, key.help)
        for section, keys_ in SCHEMA.items()
        for name, key in keys_.items()
    }


#: Names other RL libraries use for our keys, for suggestions (`train.lr` -> `train.learning_rate`).
ALIASES: dict[str, str] = {
    "lr": "learning_rate", "learningrate": "learning_rate", "step_size": "learning_rate",
    "discount": "gamma", "lam": "gae_lambda", "lmbda": "gae_lambda", "lambda": "gae_lambda", "gae": "gae_lambda",
    "ent": "ent_coef", "entropy_coef": "ent_coef", "entropy_coefficient": "ent_coef", "ent_coeff": "ent_coef",
    "vf": "vf_coef", "value_coef": "vf_coef", "value_loss_coef": "vf_coef", "vf_coeff": "vf_coef",
    "clip": "clip_coef", "clip_range": "clip_coef", "clip_param": "clip_coef", "clip_ratio": "clip_coef",
    "vf_clip": "vf_clip_coef", "clip_range_vf": "vf_clip_coef", "value_clip": "vf_clip_coef",
    "grad_clip": "max_grad_norm", "clip_grad_norm": "max_grad_norm", "max_norm": "max_grad_norm",
    "epochs": "update_epochs", "n_epochs": "update_epochs", "ppo_epochs": "update_epochs", "num_epochs": "update_epochs",
    "mini_batch_size": "minibatch_size", "mb_size": "minibatch_size", "minibatch": "minibatch_size",
    "horizon": "bptt_horizon", "n_steps": "bptt_horizon", "unroll_length": "bptt_horizon", "rollout_length": "bptt_horizon",
    "steps": "total_timesteps", "timesteps": "total_timesteps", "total_steps": "total_timesteps", "num_timesteps": "total_timesteps",
    "n_envs": "num_envs", "envs": "num_envs", "num_workers": "num_envs", "id": "name", "env_id": "name",
    "hidden": "hidden_size", "hidden_dim": "hidden_size", "width": "hidden_size", "layers": "num_layers", "depth": "num_layers",
    "threads": "cpu_threads", "optim": "optimizer", "deterministic": "torch_deterministic",
}


def _suggest(path: str, candidates: list[str]) -> str:
    """" (did you mean X?)" for an unknown key: an alias's key (this section first), the same
    key in another section, else the closest spelling."""
    section, _, name = path.rpartition(".")
    wanted = ALIASES.get(name.lower().replace("-", "_"), name.lower().replace("-", "_"))
    ranked = sorted(candidates, key=lambda c: not c.startswith(f"{section}."))  # this section first
    by_name = {}
    for candidate in ranked:
        by_name.setdefault(candidate.rpartition(".")[2], candidate)
    close = difflib.get_close_matches(wanted, list(by_name), n=1, cutoff=0.6)
    match = by_name.get(wanted) or (by_name[close[0]] if close else None)
    return f" (did you mean {match}?)" if match else ""


def _check_type(path: str, key: Key, value: Any) -> Any:
    if value is None:
        if key.nullable:
            return None
        raise ConfigError(f"{path}=null is not allowed (expected {key.type})")
    kind = key.type
    if kind == "int|auto" and value == "auto":
        return value
    if kind in ("int", "int|auto"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r} must be an integer" + (" or 'auto'" if kind == "int|auto" else ""))
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}={value!r} must be a number")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} must be true or false")
    elif kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{path}={value!r} must be a string")
        if key.choices and value not in key.choices:
            raise ConfigError(f"{path}={value!r} must be one of {', '.join(key.choices)}")
    elif kind == "list":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} must be a list, e.g. [{', '.join(key.choices or ())}]")
        unknown = [item for item in value if key.choices and item not in key.choices]
        if unknown:
            raise ConfigError(f"{path}: {unknown[0]!r} is not one of {', '.join(key.choices)}")
        value = list(value)
    elif kind == "dict":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}={value!r} must be a mapping")
        value = copy.deepcopy(dict(value))
    if kind in ("int", "int|auto", "float"):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}={value!r} must be finite")
        if key.min is not None and (value < key.min or (key.min_exclusive and value == key.min)):
            raise ConfigError(f"{path}={value!r} must be {'>' if key.min_exclusive else '>='} {key.min:g}")
        if key.max is not None and value > key.max:
            raise ConfigError(f"{path}={value!r} must be <= {key.max:g}")
    return value


def _check_combinations(config: dict) -> None:
    env, train = config["env"], config["train"]
    horizon, num_envs = train["bptt_horizon"], env["num_envs"]
    if train["batch_size"] == "auto":
        train["batch_size"] = num_envs * horizon
    batch, minibatch = train["batch_size"], train["minibatch_size"]
    if batch % horizon:
        raise ConfigError(f"train.batch_size={batch} must be a multiple of train.bptt_horizon={horizon}")
    if minibatch % horizon:
        raise ConfigError(f"train.minibatch_size={minibatch} must be a multiple of train.bptt_horizon={horizon}")
    if minibatch > batch:
        raise ConfigError(f"train.minibatch_size={minibatch} must be <= train.batch_size={batch}")
    segments = batch // horizon
    if segments < num_envs:
        raise ConfigError(
            f"train.batch_size={batch} / train.bptt_horizon={horizon} gives {segments} segments, "
            f"fewer than env.num_envs={num_envs} agents (need segments >= agents)")
    if train["diayn_mode"] == "reward" and train["diayn_features"] != "taken":
        raise ConfigError("train.diayn_mode=reward reads the stored taken-action log-probs: "
                          f"train.diayn_features={train['diayn_features']} must be taken")
    if train["e3b_batch"] == "segment" and train["e3b_decay"] is not None:
        raise ConfigError("train.e3b_batch=segment has no decay variant: with train.e3b_decay set, "
                          "use train.e3b_batch=step (or auto)")
    if train["diayn_pool"] == "entropy" and train["diayn_features"] == "taken":
        raise ConfigError("train.diayn_pool=entropy weighs each step by the policy's entropy, read from the logits: "
                          "train.diayn_features must be full or rest")
    if segments % num_envs:
        raise ConfigError(
            f"train.batch_size={batch} / train.bptt_horizon={horizon} gives {segments} segments, "
            f"not a multiple of env.num_envs={num_envs} (each agent fills whole segments)")
    stop, total = train["stop_at_steps"], train["total_timesteps"]
    if stop is not None and stop > total:
        raise ConfigError(f"train.stop_at_steps={stop} must be <= train.total_timesteps={total} "
                          "(it stops a run early; the schedules follow total_timesteps)")


def steps_to_train(config: Mapping) -> int:
    """Where a run stops: train.stop_at_steps when set, else train.total_timesteps (the
    schedules follow total_timesteps either way)."""
    train = config["train"]
    return train.get("stop_at_steps") or train["total_timesteps"]


def resolve(overrides: Mapping) -> dict:
    """Deep-merge `overrides` onto DEFAULTS, type- and range-check every key and the
    impossible combinations; return the full resolved config. Raises ConfigError."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"config must be a mapping of sections, got {type(overrides).__name__}")
    flat_names = list(keys())
    config = copy.deepcopy(DEFAULTS)
    for section, values in overrides.items():
        if section not in SCHEMA:
            raise ConfigError(f"unknown section {section}{_suggest(str(section), list(SCHEMA))}")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section}={values!r} must be a mapping of keys")
        for name, value in values.items():
            path = f"{section}.{name}"
            if name not in SCHEMA[section]:
                raise ConfigError(f"unknown key {path}{_suggest(path, flat_names)}")
            config[section][name] = _check_type(path, SCHEMA[section][name], value)
    _check_combinations(config)
    return config


def load(path: str | Path) -> dict:
    """Read a YAML config file and resolve it."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    return resolve(data or {})
