"""`memgen convert`: move a policy's params between a Hugging Face mllama directory (safetensors + config.json,
what transformers loads) and an Orbax params checkpoint (what JAX code restores onto any mesh).

    memgen convert hf-to-orbax --hf checkpoints/Llama-3.2-11B-Vision-Instruct --out ckpt/11b-orbax
    memgen convert orbax-to-hf --orbax ckpt/11b-orbax --out exported/11b-hf
    memgen convert orbax-to-hf --orbax runs/sft-1 [--step 400] --out exported/sft-1-step400   # a run directory

Orbax directory layout: OUT/params (an `orbax.checkpoint.StandardCheckpointer` checkpoint of the params pytree,
the nested dict of `model.init_params`, value head included when present) and OUT/model_config.json (the
`model.ModelConfig`, as `launch.config.to_dict` writes it, dtypes included). Both directions keep every array's
dtype and bits; the HF side is written by `model.save_hf` and read by `model.load_hf`.

`--orbax` also accepts a `memgen sft` run directory (config.json + checkpoints/<step>/state, the Orbax TrainState
that launch/checkpoint.py writes): the params of its latest complete checkpoint (or `--step`) are
`sft.optim.combine(state.trainable, state.frozen)`; the model config comes from the run config's `model` (a
preset name or a Hugging Face directory) with the checkpoint's param dtype. Only the two param partitions are restored (an
Orbax partial restore: the optimizer moments stay on disk).

Python: `hf_to_orbax(hf_dir, out_dir)`, `orbax_to_hf(orbax_dir, out_dir)`, `load_orbax(orbax_dir) -> (config,
params)`, `save_orbax(out_dir, config, params)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

PARAMS_ITEM = "params"
MODEL_CONFIG_FILE = "model_config.json"


class ConvertError(ValueError):
    """A source directory is missing or is not what the conversion needs; the message says which and what to do."""


def save_orbax(out_dir: str | Path, config, params: dict) -> Path:
    """Write params (Orbax) and the model config (JSON) into `out_dir`, which must not already hold params."""
    import orbax.checkpoint as ocp

    from launch.config import to_dict

    out_dir = Path(out_dir).absolute()
    if (out_dir / PARAMS_ITEM).exists():
        raise ConvertError(f"{out_dir / PARAMS_ITEM} already exists; choose an empty --out directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out_dir / PARAMS_ITEM, params)
        checkpointer.wait_until_finished()
    (out_dir / MODEL_CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2) + "\n")
    return out_dir


def load_orbax(orbax_dir: str | Path):
    """(config, params) from a directory written by :func:`save_orbax`; params restored with the stored dtypes
    and checked against the config's shapes."""
    import orbax.checkpoint as ocp

    import model
    from launch.checkpoint import quiet_abandoned_reads, refused_restore
    from launch.config import ConfigError, from_dict

    orbax_dir = Path(orbax_dir).absolute()
    config_file, params_dir = orbax_dir / MODEL_CONFIG_FILE, orbax_dir / PARAMS_ITEM
    if not orbax_dir.is_dir():
        raise ConvertError(f"{orbax_dir} is not a directory; pass the --out directory of 'memgen convert "
                           "hf-to-orbax'")
    if not config_file.is_file() or not params_dir.is_dir():
        raise ConvertError(f"{orbax_dir} holds no {MODEL_CONFIG_FILE} and {PARAMS_ITEM}/; pass a directory written "
                           "by 'memgen convert hf-to-orbax' or a 'memgen sft' run directory")
    try:
        config = from_dict(model.ModelConfig, json.loads(config_file.read_text()))
    except (json.JSONDecodeError, ConfigError) as error:
        raise ConvertError(f"{config_file} is not a model config ({error}); re-create the directory with "
                           "'memgen convert hf-to-orbax'") from None
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(params_dir)
            tree = getattr(metadata, "item_metadata", metadata)
            has_value_head = "value_head" in tree
            expected = model.param_shapes(config, value_head=has_value_head)
            # checked before restoring: a refused restore leaves orbax's read tasks behind, which print tracebacks
            # ("Event loop is closed") after the one sentence when the process exits
            problem = _shape_mismatch(tree, expected)
            if problem is None:
                quiet_abandoned_reads()
                return config, checkpointer.restore(params_dir, expected)
    except Exception as error:  # orbax raises many types for a damaged checkpoint
        problem = refused_restore(error)
    raise ConvertError(f"cannot restore the params in {params_dir} for the config in {config_file} "
                       f"({problem}); re-create it with 'memgen convert hf-to-orbax'")


def _shape_mismatch(stored, expected) -> str | None:
    """Where a checkpoint's stored param tree (orbax metadata leaves) differs from the config's abstract params:
    a param missing on either side or stored with another shape; None when they agree."""
    from model.params import leaves_by_path

    stored, expected = leaves_by_path(stored), leaves_by_path(expected)
    for key in sorted(set(stored) | set(expected)):
        if key not in stored:
            return f"{key} is not stored"
        if key not in expected:
            return f"{key} is stored but not in the config's model"
        if tuple(stored[key].shape) != tuple(expected[key].shape):
            return (f"{key} is stored as {tuple(stored[key].shape)}, the config's model has "
                    f"{tuple(expected[key].shape)}")
    return None


def _latest_step(checkpoints: Path) -> int | None:
    steps = [int(p.name) for p in checkpoints.iterdir() if p.is_dir() and p.name.isdigit()
             and (p / "state").is_dir()]
    return max(steps) if steps else None


def _restore_params_partitions(state_dir: Path) -> dict:
    """Only the `trainable` and `frozen` entries of a saved TrainState (a partial restore: the optimizer moments
    stay on disk), onto this process's first device, with their stored dtypes."""
    import orbax.checkpoint as ocp

    from launch.checkpoint import quiet_abandoned_reads

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    # the item's handler, not a Checkpointer: a Checkpointer looks for step metadata in the item directory (it is
    # one level up, written by the CheckpointManager) and logs an absl warning on every conversion
    handler = ocp.PyTreeCheckpointHandler()
    quiet_abandoned_reads()
    try:
        metadata = handler.metadata(state_dir)
        tree = getattr(metadata, "tree", metadata)
        wanted = {key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree[key])
                  for key in ("trainable", "frozen")}
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(dtype=s.dtype, global_shape=s.shape,
                                                                    sharding=device), wanted)
        return handler.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=wanted, restore_args=restore_args, partial_restore=True))
    finally:
        handler.close()


def load_run(run_dir: str | Path, step: int | None = None):
    """(config, params, step) of a `memgen sft` run directory's checkpoint (the latest when step is None)."""
    import model
    from launch.checkpoint import refused_restore
    from sft.optim import combine

    run_dir = Path(run_dir).absolute()
    try:
        run_config = json.loads((run_dir / "config.json").read_text())
        model_name = run_config["model"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConvertError(f"{run_dir / 'config.json'} is not a run config with a 'model' field; pass a "
                           "'memgen sft' run directory") from None
    checkpoints = run_dir / "checkpoints"
    step = _latest_step(checkpoints) if step is None else step
    state_dir = checkpoints / str(step) / "state"
    if step is None or not state_dir.is_dir():
        raise ConvertError(f"{checkpoints} holds no complete checkpoint" + ("" if step is None else f" of step {step}")
                           + "; pass a run that has saved one, or its final/ directory to hf-to-orbax")
    try:
        config = (model.load_hf_config(model_name) if Path(model_name).is_dir() else model.preset(model_name))
    except (ValueError, KeyError) as error:
        raise ConvertError(f"the run's model {model_name!r} is neither a preset nor a Hugging Face directory "
                           f"here ({error}); run the conversion where the run's model is") from None
    try:
        state = _restore_params_partitions(state_dir)
        params = combine(state["trainable"], state["frozen"])
    except Exception as error:  # orbax raises many types for a damaged checkpoint
        raise ConvertError(f"cannot restore the train state in {state_dir} ({refused_restore(error)}); pick "
                           "another --step") from None
    dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(params)}
    param_dtype = "bfloat16" if dtypes == {"bfloat16"} else "float32"
    config = config.replace(param_dtype=param_dtype, dtype=param_dtype)
    expected = model.param_shapes(config, value_head="value_head" in params)
    if jax.tree.structure(expected) != jax.tree.structure(params) or any(
            e.shape != p.shape for e, p in zip(jax.tree.leaves(expected), jax.tree.leaves(params))):
        raise ConvertError(f"the params in {state_dir} do not have the shapes of model {model_name!r}; the run "
                           "directory's config.json and checkpoints disagree")
    return config, params, step


def hf_to_orbax(hf_dir: str | Path, out_dir: str | Path) -> dict:
    import model

    if not Path(hf_dir).is_dir():
        raise ConvertError(f"--hf {hf_dir} is not a directory; pass a Hugging Face mllama model directory")
    try:
        config, params = model.load_hf(hf_dir)
    except model.ModelLoadError as error:
        raise ConvertError(str(error)) from None
    save_orbax(out_dir, config, params)
    return {"from": str(hf_dir), "to": str(out_dir), **model.param_counts(params),
            "param_dtype": config.param_dtype}


def orbax_to_hf(orbax_dir: str | Path, out_dir: str | Path, *, max_shard_size: str = "5GB",
                step: int | None = None) -> dict:
    """Export an Orbax params directory (from hf-to-orbax) or a `memgen sft` run's checkpoint as HF."""
    import model

    if (Path(orbax_dir) / "checkpoints").is_dir() and not (Path(orbax_dir) / MODEL_CONFIG_FILE).exists():
        config, params, step = load_run(orbax_dir, step)
    elif step is not None:
        raise ConvertError(f"--step applies to a run directory (with checkpoints/), and {orbax_dir} is not one")
    else:
        config, params = load_orbax(orbax_dir)
    model.save_hf(out_dir, config, params, max_shard_size=max_shard_size)
    return {"from": str(orbax_dir) + ("" if step is None else f" (step {step})"), "to": str(out_dir),
            **model.param_counts(params), "param_dtype": config.param_dtype}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    to_orbax = sub.add_parser("hf-to-orbax", help="a Hugging Face mllama directory -> an Orbax params checkpoint")
    to_orbax.add_argument("--hf", required=True, help="Hugging Face mllama directory (config.json + safetensors)")
    to_orbax.add_argument("--out", required=True, help="new directory for params/ and model_config.json")
    to_hf = sub.add_parser("orbax-to-hf", help="an Orbax params checkpoint -> a Hugging Face mllama directory")
    to_hf.add_argument("--orbax", required=True,
                       help="directory written by 'memgen convert hf-to-orbax', or a 'memgen sft' run directory")
    to_hf.add_argument("--step", type=int, default=None, help="run directory: the checkpoint step (default: latest)")
    to_hf.add_argument("--out", required=True, help="output Hugging Face directory")
    to_hf.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (e.g. 5GB, 100MB)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.direction == "hf-to-orbax":
            summary = hf_to_orbax(args.hf, args.out)
        else:
            summary = orbax_to_hf(args.orbax, args.out, max_shard_size=args.max_shard_size, step=args.step)
    except ConvertError as error:
        print(f"memgen convert: {error}", file=sys.stderr)
        return 2
    print(f"{args.direction}: {summary['from']} -> {summary['to']}: {summary['total']:,} params "
          f"({summary['param_dtype']})")
    return 0
