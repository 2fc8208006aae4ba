"""Configs for every memgen command: nested frozen dataclasses, a registry of named presets, command-line
overrides (``section.field=value``) parsed by each field's declared type, and JSON round trips so a run directory
holds the full resolved config it ran with.

Override syntax: ``key=value`` where key is a dotted path of field names (``optimizer.lr=1e-5``, ``steps=100``).
Values are parsed by the field's type: int (``100``, ``1_000``, ``1e3``), float (``1e-5``), bool (``true/false``,
``yes/no``, ``1/0``), str (optionally quoted), a Literal's choices, ``none``/``null`` for Optional fields, and
tuples/lists as ``[a,b]``, ``a,b`` or ``[]`` (items parsed by the element type).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, TypeVar, Union

from sft.optim import OptimizerConfig

T = TypeVar("T")

CONFIG_FILENAME = "config.json"


class ConfigError(ValueError):
    """A config, preset name, override or config file is wrong; the message says which and what to do."""


def check_counts(owner: str, minimum: int, **counts: int) -> None:
    """Each of a config's `counts` (field name = value) at least `minimum`, else a ValueError naming the first that
    is not: the configs' own check (`__post_init__`), which `resolve` and `load_config` stop as one sentence, so a
    bad count never reaches the run as a crash deep inside it. `owner`: the fields' section or class ("checkpoint",
    "EpisodeConfig"; empty for a run config's top-level fields)."""
    prefix = f"{owner}." if owner else ""
    for name, value in counts.items():
        if value < minimum:
            raise ValueError(f"{prefix}{name}={value} must be at least {minimum}")


# --- the SFT run config (other commands register theirs the same way) ---------------------------------------

@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpointing of a run: save every ``every_steps`` steps (and at the end), keep the latest ``keep``,
    write asynchronously so training continues while a checkpoint is written."""

    every_steps: int = 100
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        check_counts("checkpoint", 1, every_steps=self.every_steps, keep=self.keep)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the expert data comes from. ``path`` empty: generated in-process from the task config and the run's
    seed (a run is reproducible from its config alone); otherwise a JSONL written by the task's ``write_jsonl``.
    Every example is padded to one length: the longest example rounded up to ``length_multiple`` tokens; with
    ``length_buckets`` > 1, batches are grouped by length (chunks of 16 batches sorted by length, sft.data_order)
    and each is padded to the shortest of that many bucket lengths that fits it (one compilation per bucket).
    ``pack_length`` > 0 packs examples: each of a batch's ``batch_size`` rows holds as many consecutive examples
    (in the data order) as fit in ``pack_length`` tokens, each seeing only itself (sft/packing.py); 0: one
    example per row. ``heldout_path``: a JSONL of the same writers holding the held-out examples (the first
    ``eval_examples`` are used; none may ask a question the training data asks); empty: generated from the task's
    default config, which matches only training data of that config, so a ``path`` written with other templates
    or settings (e.g. the miniature's compact prompts) needs one for a meaningful held-out loss."""

    path: str = ""
    heldout_path: str = ""
    length_multiple: int = 64
    length_buckets: int = 1
    pack_length: int = 0

    def __post_init__(self):
        check_counts("data", 1, length_multiple=self.length_multiple, length_buckets=self.length_buckets)
        check_counts("data", 0, pack_length=self.pack_length)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """One SFT run. ``steps`` optimizer steps of ``batch_size`` examples (split into ``grad_accum_steps``
    microbatches); ``freeze`` lists param groups (vision_encoder, projector, language_model, cross_attention,
    value_head) or whole-path regexes; ``compute_dtype`` is the dtype params are cast to inside the loss;
    ``param_dtype`` the master weights' (float32; bfloat16 where they would not fit, e.g. a 90B on one host, which
    puts Adam's moments in bfloat16 too: `memgen plan --param-dtype`); ``remat`` is the model's
    gradient-checkpointing policy in the train step ("none"; "full": recompute each layer in the backward pass;
    "dots": keep its matmul outputs);
    ``attention_block`` the queries per attention block (model.config.ModelConfig.attention_block; 0: all at
    once, the (B, H, S, K) probabilities of a layer materialised); the run stops
    after ``max_consecutive_skips`` non-finite steps in a row; ``eval_every`` steps it measures the held-out loss
    on ``eval_examples`` examples and the greedy success on
    ``greedy_examples`` hands per evaluation split, answering with at most ``max_new_tokens`` tokens (0: never).
    ``model`` is a model preset name (tiny, small, 11b, 90b: random init with the seed and memgen's offline
    tokenizer) or a Hugging Face mllama directory. ``mesh`` is the device mesh's (data, fsdp, tensor) sizes, -1
    for all remaining devices."""

    task: Literal["general_points", "virl"] = "general_points"
    modality: Literal["language", "vision"] = "language"
    model: str = "tiny"
    seed: int = 0
    steps: int = 100
    batch_size: int = 16
    grad_accum_steps: int = 1
    compute_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "full", "dots"] = "none"
    attention_block: int = 0
    freeze: tuple[str, ...] = ()
    train_examples: int = 1000
    eval_examples: int = 128
    eval_every: int = 50
    greedy_examples: int = 32
    max_new_tokens: int = 128
    log_every: int = 1
    max_consecutive_skips: int = 5
    mesh: tuple[int, int, int] = (1, -1, 1)
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    def __post_init__(self):
        check_counts("", 1, steps=self.steps, batch_size=self.batch_size, grad_accum_steps=self.grad_accum_steps,
                     train_examples=self.train_examples, max_new_tokens=self.max_new_tokens, log_every=self.log_every,
                     max_consecutive_skips=self.max_consecutive_skips)
        check_counts("", 0, seed=self.seed, attention_block=self.attention_block, eval_examples=self.eval_examples,
                     eval_every=self.eval_every, greedy_examples=self.greedy_examples)


# --- presets -------------------------------------------------------------------------------------------------

_PRESETS: dict[str, Callable[[], Any]] = {}


def register_preset(name: str, make: Callable[[], Any] | Any) -> None:
    """Register a preset: a config instance or a zero-argument function returning one."""
    if name in _PRESETS:
        raise ConfigError(f"preset {name!r} is already registered; choose another name")
    is_instance = dataclasses.is_dataclass(make) and not isinstance(make, type)
    _PRESETS[name] = (lambda: make) if is_instance else make


def _load_preset_modules() -> None:
    """Register the presets defined outside this module (the RL/eval ones and the experiment matrix of
    launch/presets.py) the first time presets are looked up; importing them here at the top would be circular."""
    import launch.presets  # noqa: F401


def preset_names(kind: type | None = None) -> list[str]:
    """Registered preset names; with ``kind``, only those whose config is of that class (a command's presets)."""
    _load_preset_modules()
    return sorted(name for name, make in _PRESETS.items() if kind is None or isinstance(make(), kind))


def get_preset(name: str, kind: type | None = None) -> Any:
    """The config of preset ``name``; with ``kind``, a preset of another command is refused in one sentence."""
    _load_preset_modules()
    if name not in _PRESETS or (kind is not None and not isinstance(_PRESETS[name](), kind)):
        problem = "is unknown" if name not in _PRESETS else "belongs to another command"
        raise ConfigError(f"preset {name!r} {problem}; choose one of: {', '.join(preset_names(kind))}")
    return _PRESETS[name]()


def resolve(preset: str, overrides: Iterable[str] = (), kind: type | None = None) -> Any:
    """The config of ``preset`` (of class ``kind`` when given) with the command-line ``overrides`` applied."""
    return apply_overrides(get_preset(preset, kind), overrides)


# The reference protocol's SFT runs (lr 1e-6 for the text variants, 5e-7 for the vision ones; full fine-tune,
# batch 128, gradient checkpointing) from a local download of meta-llama/Llama-3.2-11B-Vision-Instruct (override
# model=PATH).
REFERENCE_MODEL_DIR = "checkpoints/Llama-3.2-11B-Vision-Instruct"
for _task, _short in (("general_points", "gp"), ("virl", "virl")):
    register_preset(f"sft-{_short}-l", SFTConfig(task=_task, modality="language", model=REFERENCE_MODEL_DIR,
                                                 batch_size=128, remat="full", optimizer=OptimizerConfig(lr=1e-6)))
    register_preset(f"sft-{_short}-vl", SFTConfig(task=_task, modality="vision", model=REFERENCE_MODEL_DIR,
                                                  batch_size=128, remat="full", optimizer=OptimizerConfig(lr=5e-7)))
# Small enough for a CPU (seconds per step): the tiny random model with the offline tokenizer, float32, one device.
_TINY = SFTConfig(model="tiny", steps=20, batch_size=4, train_examples=64, eval_examples=16, eval_every=10,
                  greedy_examples=4, max_new_tokens=48, compute_dtype="float32", mesh=(1, 1, 1),
                  optimizer=OptimizerConfig(lr=1e-3), checkpoint=CheckpointConfig(every_steps=10, keep=2))
register_preset("sft-tiny", _TINY)
register_preset("tiny-gp-l", _TINY)
register_preset("tiny-gp-vl", dataclasses.replace(_TINY, modality="vision"))


# --- overrides -----------------------------------------------------------------------------------------------

def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(config: Any, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config (its leaf fields)."""
    keys = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys.extend(valid_keys(value, f"{prefix}{field.name}."))
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    if typing.get_origin(annotation) is not None:  # tuple[int, int, int], not just "tuple"
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return [item if isinstance(item, str) else json.dumps(item) for item in parsed]
        except json.JSONDecodeError:
            pass
        text = text[1:-1]
    return [item.strip() for item in text.split(",")] if text.strip() else []


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_value(text: str, annotation: Any) -> Any:
    """Parse the command-line string ``text`` as a value of type ``annotation``; raises ValueError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return parse_value(text, option)
            except ValueError:
                continue
        raise ValueError(f"expected {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        value = _unquote(text)
        for choice in args:
            if str(choice) == value:
                return choice
        raise ValueError(f"expected {_type_name(annotation)}")
    if origin in (tuple, list) or annotation in (tuple, list):
        items = _split_list(text)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} items")
            values = [parse_value(item, arg) for item, arg in zip(items, args)]
        else:
            element = args[0] if args else str
            values = [parse_value(item, element) for item in items]
        return tuple(values) if (origin or annotation) is tuple else values
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ValueError("expected true or false")
    if annotation is int:
        cleaned = text.strip()
        try:
            return int(cleaned)
        except ValueError:
            try:
                as_float = float(cleaned)
            except ValueError:
                raise ValueError("expected an integer") from None
            if as_float.is_integer():
                return int(as_float)
            raise ValueError("expected an integer") from None
    if annotation is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    if annotation is str:
        return _unquote(text)
    raise ValueError(f"fields of type {_type_name(annotation)} cannot be set from the command line")


def _valid_keys_clause(config: Any) -> str:
    """The tail every override error ends with (issue 8: unknown keys and wrong types list the valid keys)."""
    return f"valid keys are: {', '.join(valid_keys(config))}"


def _unknown_key(key: str, config: Any) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(config), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; {_valid_keys_clause(config)}")


def _parse_override(config: Any, path: list[str], raw: str, full_key: str, root: Any) -> Any:
    """The value of ``full_key`` (the remaining ``path`` below ``config``) parsed to its field's type; unknown
    keys, sections and wrong types stop in one sentence."""
    name = path[0]
    if not dataclasses.is_dataclass(config) or name not in {f.name for f in dataclasses.fields(config)}:
        raise _unknown_key(full_key, root)
    current = getattr(config, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise _unknown_key(full_key, root)
        return _parse_override(current, path[1:], raw, full_key, root)
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"config key '{full_key}' is a section, not a value; set its fields instead, e.g. "
                          f"'{valid_keys(current, full_key + '.')[0]}=...'; {_valid_keys_clause(root)}")
    annotation = _field_types(type(config))[name]
    try:
        return parse_value(raw, annotation)
    except ValueError as error:
        expected = _type_name(annotation)
        suffix = "" if expected in str(error) else f" ({expected})"
        raise ConfigError(f"config key '{full_key}' got {raw!r}, but {error}{suffix}; "
                          f"{_valid_keys_clause(root)}") from None


def _replace(config: Any, changes: dict[str, Any]) -> Any:
    """``config`` with the nested ``changes`` (field name -> value, or -> the changes of a section) applied,
    constructing each changed dataclass once, so its checks see all of a command line's overrides together."""
    return dataclasses.replace(config, **{
        name: _replace(getattr(config, name), change) if isinstance(change, dict) else change
        for name, change in changes.items()})


def apply_overrides(config: T, overrides: Iterable[str]) -> T:
    """``config`` with the ``key=value`` overrides applied (a key given twice: the later one wins). A config's own
    checks (e.g. PPO's final learning rate <= its learning rate) run once, after all overrides, so their order does
    not matter; a combination they refuse stops with their sentence."""
    changes: dict[str, Any] = {}
    for override in list(overrides):
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form key=value, e.g. 'optimizer.lr=1e-5'")
        path = key.split(".")
        value = _parse_override(config, path, raw, key, config)
        section = changes
        for name in path[:-1]:
            section = section.setdefault(name, {})
        section[path[-1]] = value
    return _checked(lambda: _replace(config, changes), "the config after the overrides")


def _checked(build: Callable[[], T], what: str, advice: str = "") -> T:
    """``build()``, with a config class's own check failing in it (a ValueError from its ``__post_init__``, e.g.
    PPO's final learning rate above its learning rate) stopped as one sentence naming ``what`` was invalid."""
    try:
        return build()
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{what} is invalid: {error}{advice}") from None


# --- dict / JSON ---------------------------------------------------------------------------------------------

def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready nested dict of a config (tuples become lists)."""
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {field.name: convert(getattr(value, field.name)) for field in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [convert(item) for item in value]
        return value
    return convert(config)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check a JSON value against a field's type, converting lists to tuples and ints to floats."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, _prefix=key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in args:
            return value
    elif origin in (tuple, list) or annotation in (tuple, list):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
                if len(value) == len(args):
                    return tuple(_coerce(v, a, key) for v, a in zip(value, args))
            else:
                element = args[0] if args else Any
                items = [_coerce(v, element, key) for v in value]
                return tuple(items) if (origin or annotation) is tuple else items
    elif annotation is Any:
        return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation in (int, bool, str):
        if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
            return value
    raise ConfigError(f"config key '{key}' has the value {value!r}, which is not {_type_name(annotation)}; "
                      "fix the config file")


def from_dict(cls: type[T], data: Mapping[str, Any], *, _prefix: str = "") -> T:
    """The config of class ``cls`` described by ``data`` (as written by :func:`to_dict`); unknown keys and
    wrongly typed values are errors, missing keys take their defaults."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{_prefix.rstrip('.') or cls.__name__}' must be a JSON object, got "
                          f"{type(data).__name__}; fix the config file")
    hints = _field_types(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{_prefix}{unknown[0]}' in {cls.__name__}; valid keys are: "
                          f"{', '.join(_prefix + name for name in sorted(names))}")
    values = {name: _coerce(value, hints[name], _prefix + name) for name, value in data.items()}
    return _checked(lambda: cls(**values), f"config section '{_prefix.rstrip('.') or cls.__name__}'",
                    " Fix the config file.")


def save_config(config: Any, run_dir: str | os.PathLike) -> Path:
    """Write the full resolved config as ``run_dir/config.json`` (atomically) and return its path. In a multi-host
    run only process 0 writes (the run directory is shared; the others return the path)."""
    from launch.metrics import is_primary_process

    path = Path(run_dir) / CONFIG_FILENAME
    if not is_primary_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(to_dict(config), indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)
    return path


def check_run_directory(config: Any, run_dir: str | os.PathLike) -> bool:
    """Whether `run_dir` already holds a run of `config` (so the caller resumes it); False for a new directory.
    A directory holding a run of another config stops with one sentence naming the fields that differ: resuming
    it would mix two runs in one metrics.jsonl."""
    if not (Path(run_dir) / CONFIG_FILENAME).is_file():
        return False
    old, new = to_dict(load_config(type(config), run_dir)), to_dict(config)
    if old != new:
        changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
        raise ConfigError(f"{run_dir} holds a run with another config (differs in: {', '.join(changed)}); use a "
                          "new --out directory, or the same settings to resume it")
    return True


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    """Read a config written by :func:`save_config` (a run directory or the JSON file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass a run directory that holds {CONFIG_FILENAME}"
                          ) from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON ({error}); fix or delete it") from None
    return from_dict(cls, data)
