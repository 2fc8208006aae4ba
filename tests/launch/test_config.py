"""Config presets, typed command-line overrides with one-sentence errors, and JSON round trips."""

import dataclasses
import json
import re
from typing import Literal, Optional

import pytest

from launch.config import (CheckpointConfig, ConfigError, SFTConfig, apply_overrides, from_dict, get_preset,
                           load_config, parse_value, preset_names, register_preset, resolve, save_config,
                           to_dict, valid_keys)
from sft.optim import OptimizerConfig


def test_presets_hold_the_reference_learning_rates():
    assert {"sft-gp-l", "sft-gp-vl", "sft-virl-l", "sft-virl-vl", "sft-tiny"} <= set(preset_names())
    assert get_preset("sft-gp-l").optimizer.lr == 1e-6
    assert get_preset("sft-gp-vl").optimizer.lr == 5e-7
    assert get_preset("sft-virl-vl").modality == "vision" and get_preset("sft-virl-vl").task == "virl"
    with pytest.raises(ConfigError, match="preset 'nope' is unknown; choose one of: .*sft-tiny"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="already registered"):
        register_preset("sft-tiny", SFTConfig())


def test_a_command_refuses_another_commands_preset():
    import launch.rl_config  # noqa: F401  (registers the rl and eval presets)

    assert "rl-tiny" in preset_names() and "rl-tiny" not in preset_names(SFTConfig)
    assert resolve("sft-tiny", kind=SFTConfig).task == "general_points"
    with pytest.raises(ConfigError, match="preset 'rl-tiny' belongs to another command; choose one of: .*sft-tiny"):
        resolve("rl-tiny", kind=SFTConfig)


def test_overrides_parse_by_field_type():
    config = resolve("sft-tiny", ["optimizer.lr=1e-5", "steps=100", "freeze=[vision_encoder,projector]",
                                  "checkpoint.async_save=false", "compute_dtype=bfloat16",
                                  "optimizer.max_grad_norm=none", "batch_size=1e3", "model='my model'"])
    assert config.optimizer.lr == 1e-5 and isinstance(config.optimizer.lr, float)
    assert config.steps == 100 and config.batch_size == 1000
    assert config.freeze == ("vision_encoder", "projector")
    assert config.checkpoint.async_save is False and config.compute_dtype == "bfloat16"
    assert config.optimizer.max_grad_norm is None and config.model == "my model"
    assert apply_overrides(config, ["freeze=[]"]).freeze == ()
    assert apply_overrides(config, ['freeze=["language_model/layers/.*", "value_head"]']).freeze == (
        "language_model/layers/.*", "value_head")
    assert apply_overrides(config, ["freeze=vision_encoder"]).freeze == ("vision_encoder",)
    assert apply_overrides(config, ["optimizer.max_grad_norm=0.5"]).optimizer.max_grad_norm == 0.5
    assert get_preset("sft-tiny").steps == 20  # presets are not mutated


_ALL_KEYS = r"; valid keys are: task, modality, model, .*optimizer\.lr, .*checkpoint\.async_save$"


@pytest.mark.parametrize("override, message, lists_keys", [
    ("optimizer.lrr=1", r"unknown config key 'optimizer.lrr' \(did you mean 'optimizer.lr'\?\)", True),
    ("stepz=3", "unknown config key 'stepz'", True),
    ("steps.x=3", "unknown config key 'steps.x'", True),
    ("steps=1.5", r"config key 'steps' got '1.5', but expected an integer", True),
    ("optimizer.lr=fast", "config key 'optimizer.lr' got 'fast', but expected a number", True),
    ("compute_dtype=float16", "config key 'compute_dtype' got 'float16', but expected one of 'float32', 'bfloat16'",
     True),
    ("checkpoint.async_save=maybe", "config key 'checkpoint.async_save' got 'maybe', but expected true or false",
     True),
    ("freeze=[a,b]", None, False),  # a valid override (the control case)
    ("mesh=[1,2]", r"config key 'mesh' got '\[1,2\]', but expected 3 items \(tuple\[int, int, int\]\)", True),
    ("optimizer=3", "config key 'optimizer' is a section, not a value; set its fields instead, e.g. "
                    "'optimizer.name=...'", True),
    ("steps", "override 'steps' is not of the form key=value", False),
])
def test_bad_overrides_are_one_clear_sentence(override, message, lists_keys):
    """Issue 8: an unknown key and a wrong type are both rejected with the list of valid keys, in one sentence."""
    if message is None:
        apply_overrides(SFTConfig(), [override])
        return
    with pytest.raises(ConfigError) as error:
        apply_overrides(SFTConfig(), [override])
    text = str(error.value)
    assert re.match(message, text), text
    assert "\n" not in text
    if lists_keys:
        assert re.search(_ALL_KEYS, text), text
        listed = text.split("; valid keys are: ", 1)[1].split(", ")
        assert listed == valid_keys(SFTConfig())  # every key, exactly once, nothing else
        assert text.count("; valid keys are: ") == 1
    else:
        assert "valid keys" not in text


def test_a_configs_own_checks_see_all_overrides_at_once():
    """PPOConfig refuses final_learning_rate > learning_rate. Lowering both below rl-tiny's (1e-2 -> 1e-3) is valid
    in either order: checked after every override, the first one alone was refused. A combination the config
    refuses stops in one sentence (not a traceback)."""
    import launch.rl_config  # noqa: F401  (registers the rl presets)
    from launch.rl_config import RLConfig

    lowered = ["ppo.learning_rate=1e-5", "ppo.final_learning_rate=1e-6"]
    for order in (lowered, lowered[::-1]):
        config = resolve("rl-tiny", order, kind=RLConfig)
        assert (config.ppo.learning_rate, config.ppo.final_learning_rate) == (1e-5, 1e-6)
    assert resolve("rl-tiny", ["ppo.learning_rate=1", "ppo.learning_rate=1e-5", "ppo.final_learning_rate=1e-6"],
                   kind=RLConfig).ppo.learning_rate == 1e-5  # a key given twice: the later one wins
    with pytest.raises(ConfigError) as error:
        resolve("rl-tiny", ["ppo.learning_rate=1e-5"], kind=RLConfig)
    text = str(error.value)
    assert text.startswith("the config after the overrides is invalid: PPOConfig needs 0 < final_learning_rate")
    assert "\n" not in text


@pytest.mark.parametrize("preset, override, message", [
    ("sft-tiny", "log_every=0", "log_every=0 must be at least 1"),
    ("sft-tiny", "grad_accum_steps=0", "grad_accum_steps=0 must be at least 1"),
    ("sft-tiny", "max_new_tokens=0", "max_new_tokens=0 must be at least 1"),
    ("sft-tiny", "max_consecutive_skips=0", "max_consecutive_skips=0 must be at least 1"),
    ("sft-tiny", "seed=-1", "seed=-1 must be at least 0"),
    ("sft-tiny", "checkpoint.keep=0", "checkpoint.keep=0 must be at least 1"),
    ("sft-tiny", "data.length_buckets=0", "data.length_buckets=0 must be at least 1"),
    ("rl-tiny", "eval_episodes=0", "eval_episodes=0 must be at least 1"),
    ("rl-tiny", "log_every=0", "log_every=0 must be at least 1"),
    ("rl-tiny", "episodes_per_update=0", "episodes_per_update=0 must be at least 1"),
    ("rl-tiny", "episodes.max_new_tokens=0", "EpisodeConfig.max_new_tokens=0 must be at least 1"),
    ("rl-tiny", "episodes.feedback_len=0", "EpisodeConfig.feedback_len=0 must be at least 1"),
    ("rl-tiny", "episodes.cache_stages=0", "EpisodeConfig.cache_stages=0 must be at least 1"),
    ("rl-virl-tiny", "episodes.min_route_steps=9", "EpisodeConfig.min_route_steps=9 is above max_route_steps"),
    ("rl-virl-tiny", "checkpoint.every_steps=0", "checkpoint.every_steps=0 must be at least 1"),
    ("eval-tiny", "verify_budgets=[0]", "verify_budgets=[0] needs at least one budget, each at least 1"),
    ("eval-tiny", "max_rows=0", "max_rows=0 must be at least 1"),
    ("eval-tiny", "sampling.max_new_tokens=0", "EpisodeConfig.max_new_tokens=0 must be at least 1"),
])
def test_counts_out_of_range_stop_at_the_config(preset, override, message):
    """A count a run would crash on deep inside (a modulo by log_every=0, an evaluation of no episodes, a decode of
    no tokens) is refused when the config is built, in one sentence."""
    import launch.rl_config  # noqa: F401  (registers the rl presets)

    with pytest.raises(ConfigError) as error:
        resolve(preset, [override])
    text = str(error.value)
    assert text.startswith(f"the config after the overrides is invalid: {message}"), text
    assert "\n" not in text
    resolve(preset, [override.split("=")[0] + "=" + ("2" if "min_route" in override else "1")])  # in range: fine


@pytest.mark.parametrize("command, preset", [("rl", "rl-tiny"), ("eval", "eval-tiny")])
def test_task_settings_the_task_refuses_stop_before_the_run(tmp_path, capsys, command, preset):
    """GeneralPoints' own check of its settings (num_cards 1..6) stops `memgen rl` / `memgen eval` in one sentence
    before anything is loaded or written."""
    from launch.cli import main

    section = "episodes" if command == "rl" else "sampling"
    assert main([command, "--preset", preset, "--out", str(tmp_path), f"{section}.num_cards=0"]) == 2
    error = capsys.readouterr().err
    assert "task settings are invalid: GeneralPointsConfig: num_cards must be an integer 1..6, got 0" in error
    assert error.count("\n") == 1 and not (tmp_path / "config.json").exists()


def test_parse_value_handles_optional_literal_and_fixed_tuples():
    assert parse_value("null", Optional[int]) is None and parse_value("3", Optional[int]) == 3
    assert parse_value("2", Literal[1, 2]) == 2
    assert parse_value("[1, 2]", tuple[int, int]) == (1, 2)
    assert parse_value("1,2.5", list[float]) == [1.0, 2.5]
    with pytest.raises(ValueError, match="expected 2 items"):
        parse_value("1,2,3", tuple[int, int])


def test_dict_and_json_round_trip(tmp_path):
    config = resolve("sft-gp-vl", ["freeze=[vision_encoder]", "optimizer.max_grad_norm=none"])
    data = to_dict(config)
    assert data["freeze"] == ["vision_encoder"] and data["optimizer"]["lr"] == 5e-7
    assert from_dict(SFTConfig, json.loads(json.dumps(data))) == config
    path = save_config(config, tmp_path / "run")
    assert path == tmp_path / "run" / "config.json"
    assert load_config(SFTConfig, tmp_path / "run") == config
    assert from_dict(SFTConfig, {"steps": 3}) == dataclasses.replace(SFTConfig(), steps=3)


def test_bad_config_files_are_one_clear_sentence(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.lrate' in OptimizerConfig"):
        from_dict(SFTConfig, {"optimizer": {"lrate": 1.0}})
    with pytest.raises(ConfigError, match="config key 'steps' has the value '3', which is not int"):
        from_dict(SFTConfig, {"steps": "3"})
    with pytest.raises(ConfigError, match="config key 'checkpoint.keep' has the value True"):
        from_dict(SFTConfig, {"checkpoint": {"keep": True}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, tmp_path)
    from launch.rl_config import RLConfig
    with pytest.raises(ConfigError, match=r"^config section 'ppo' is invalid: PPOConfig needs 0 < final_learning_rate"):
        from_dict(RLConfig, {"ppo": {"learning_rate": 1e-5, "final_learning_rate": 1e-4}})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config(SFTConfig, tmp_path)


def test_valid_keys_lists_leaves():
    keys = valid_keys(SFTConfig())
    assert "optimizer.lr" in keys and "checkpoint.every_steps" in keys and "optimizer" not in keys
    assert isinstance(CheckpointConfig(), CheckpointConfig) and OptimizerConfig().lr == 1e-6
