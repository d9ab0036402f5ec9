"""The config schema: defaults, types, impossible combinations, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from trainer import config
from trainer.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_pufferlib_values():
    resolved = config.resolve({})
    train = resolved["train"]
    assert (train["gamma"], train["gae_lambda"], train["clip_coef"], train["vf_coef"]) == (0.995, 0.90, 0.2, 2.0)
    assert (train["vf_clip_coef"], train["ent_coef"], train["max_grad_norm"]) == (0.2, 0.001, 1.5)
    assert (train["update_epochs"], train["bptt_horizon"], train["minibatch_size"]) == (1, 64, 8192)
    assert (train["prio_alpha"], train["prio_beta0"], train["adam_beta1"], train["adam_eps"]) == (0.8, 0.2, 0.95, 1e-12)
    assert train["advantage"] == "puff" and train["anneal_lr"] is True
    assert train["batch_size"] == resolved["env"]["num_envs"] * 64  # auto
    assert resolved["env"]["reward_clip"] == 1.0


def test_overrides_merge_deep_and_ints_become_floats():
    resolved = config.resolve({"train": {"learning_rate": 1, "minibatch_size": 512}, "env": {"num_envs": 8}})
    assert resolved["train"]["learning_rate"] == 1.0 and isinstance(resolved["train"]["learning_rate"], float)
    assert resolved["train"]["gamma"] == 0.995
    assert resolved["train"]["batch_size"] == 8 * 64
    assert config.DEFAULTS["env"]["num_envs"] != 8  # DEFAULTS untouched


@pytest.mark.parametrize("overrides, message", [
    ({"train": {"batch_size": 1000, "bptt_horizon": 64}},
     "train.batch_size=1000 must be a multiple of train.bptt_horizon=64"),
    ({"train": {"minibatch_size": 1000}}, "train.minibatch_size=1000 must be a multiple of train.bptt_horizon=64"),
    ({"env": {"num_envs": 4}, "train": {"batch_size": 4096, "minibatch_size": 8192}},
     "train.minibatch_size=8192 must be <= train.batch_size=4096"),
    ({"env": {"num_envs": 128}, "train": {"batch_size": 4096, "minibatch_size": 4096}},
     "gives 64 segments, fewer than env.num_envs=128 agents"),
    ({"env": {"num_envs": 48}, "train": {"batch_size": 4096, "minibatch_size": 4096}},
     "not a multiple of env.num_envs=48"),
    ({"train": {"learning_rat": 0.1}}, "unknown key train.learning_rat (did you mean train.learning_rate?)"),
    ({"trian": {}}, "unknown section trian (did you mean train?)"),
    ({"train": {"update_epochs": 1.5}}, "train.update_epochs=1.5 must be an integer"),
    ({"train": {"update_epochs": True}}, "train.update_epochs=True must be an integer"),
    ({"train": {"learning_rate": "fast"}}, "train.learning_rate='fast' must be a number"),
    ({"train": {"norm_adv": 1}}, "train.norm_adv=1 must be true or false"),
    ({"train": {"gamma": None}}, "train.gamma=null is not allowed"),
    ({"train": {"advantage": "td"}}, "train.advantage='td' must be one of puff, gae, vtrace"),
    ({"train": {"gamma": 1.5}}, "train.gamma=1.5 must be <= 1"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate=0.0 must be > 0"),
    ({"env": {"num_envs": 0}}, "env.num_envs=0 must be >= 1"),
    ({"env": {"kwargs": [1]}}, "env.kwargs=[1] must be a mapping"),
])
def test_impossible_settings_name_keys_and_values(overrides, message):
    with pytest.raises(ConfigError) as error:
        config.resolve(overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_nullable_keys_accept_null():
    resolved = config.resolve({"env": {"reward_clip": None}, "train": {"cpu_threads": None}})
    assert resolved["env"]["reward_clip"] is None


def test_keys_lists_every_key_with_type_default_help():
    flat = config.keys()
    assert flat["train.learning_rate"][:2] == ("float", 0.015)
    assert flat["env.reward_clip"][0] == "float|null"
    assert all(info[2] for info in flat.values())
    assert len(flat) == sum(len(section) for section in config.DEFAULTS.values())


def test_load_reads_yaml_and_reports_bad_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  num_envs: 16\ntrain:\n  minibatch_size: 512\n")
    assert config.load(path)["train"]["batch_size"] == 16 * 64
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load(tmp_path / "missing.yaml")


def test_config_module_does_not_import_torch():
    code = "import sys, trainer.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("overrides, suggestion", [
    ({"train": {"lr": 0.1}}, "unknown key train.lr (did you mean train.learning_rate?)"),
    ({"train": {"clip_range": 0.1}}, "(did you mean train.clip_coef?)"),
    ({"train": {"num_envs": 8}}, "unknown key train.num_envs (did you mean env.num_envs?)"),
    ({"env": {"n_envs": 8}}, "(did you mean env.num_envs?)"),
    ({"policy": {"hiden_size": 8}}, "(did you mean policy.hidden_size?)"),
    ({"trian": {}}, "unknown section trian (did you mean train?)"),
])
def test_suggestions_know_aliases_and_other_sections(overrides, suggestion):
    with pytest.raises(config.ConfigError) as error:
        config.resolve(overrides)
    assert suggestion in str(error.value)


def test_no_suggestion_for_a_key_like_nothing():
    with pytest.raises(config.ConfigError) as error:
        config.resolve({"train": {"zzz": 1}})
    assert str(error.value) == "unknown key train.zzz"
