"""The planner (`memgen plan`) against XLA's compiled memory analysis of the real SFT train step on CPU devices:
argument bytes (params + optimizer state + batch) and temporaries (gradients + activations + XLA scratch), per
device, for several meshes and remat policies. Figures go to docs/plan.md.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python benchmarks/plan_vs_xla.py
    ... --no-mesh-context   # compile without jax.set_mesh: the model's activation constraints are then no-ops

By default each step is compiled under `jax.set_mesh(mesh)`, which turns on the model's activation sharding
constraints (model.sharding.constrain_batch on the embedding output and every text layer's input).
"""

import argparse
import contextlib
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from launch import plan as P  # noqa: E402
from launch.mesh import MeshConfig, make_mesh  # noqa: E402


<<<<<<< HEAD
def constrain_layer_inputs(mesh_config: MeshConfig) -> None:
    """Experiment only: wrap model.text.self_attention_layer so its input is constrained to the batch placement
    (what a sharding constraint inside the model's decoder would do)."""
    import model.text as text
    mesh = make_mesh(mesh_config)
    original = text.__dict__.setdefault("_unconstrained_self_attention_layer", text.self_attention_layer)

    def layer(p, x, *args, **kwargs):
        x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, None)))
        return original(p, x, *args, **kwargs)

    text.self_attention_layer = layer


def measure(model: str = "small", batch: int = 8, seq: int = 128,
            meshes=("data=2,fsdp=2,tensor=2", "data=8,fsdp=1", "fsdp=2,tensor=4", "fsdp=8"),
            remats=P.REMATS, constrain: bool = False):
    """Yields one dict per (mesh, remat): `launch.plan.xla_train_step_memory`'s result with the mesh and remat."""
    for mesh_text in meshes:
        mesh_config = MeshConfig.parse(mesh_text)
        if constrain:
            constrain_layer_inputs(mesh_config)
        for remat in remats:
            config = P.PlanConfig(model=model, mesh=mesh_config, devices=8, batch_size=batch,
                                  seq_len=seq, num_images=0, remat=remat, compute_dtype="float32",
                                  freeze=("vision_encoder",))
            yield {"mesh": mesh_text, "remat": remat, **P.xla_train_step_memory(config)}


=======
>>>>>>> perf
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--meshes", nargs="*", default=["data=2,fsdp=2,tensor=2", "data=8,fsdp=1",
                                                        "fsdp=2,tensor=4", "fsdp=8"])
    parser.add_argument("--no-mesh-context", action="store_true")
    args = parser.parse_args()
    print("| mesh | remat | XLA arguments | planned | XLA temp | planned grads + activations | factor |")
    print("|---|---|---|---|---|---|---|")
<<<<<<< HEAD
    for r in measure(args.model, args.batch, args.seq, args.meshes, constrain=args.constrain_layer_inputs):
        print(f"| {r['mesh']} | {r['remat']} | {r['argument_bytes']:,} | {r['planned_argument_bytes']:,} | "
              f"{r['temp_bytes']:,} | {r['planned_temp_bytes']:,} | "
              f"{r['temp_bytes'] / r['planned_temp_bytes']:.2f} |", flush=True)
=======
    for mesh_text in args.meshes:
        mesh_config = MeshConfig.parse(mesh_text)
        mesh = make_mesh(mesh_config, jax.devices()[:8])
        for remat in P.REMATS:
            config = P.PlanConfig(model=args.model, mesh=mesh_config, devices=8, batch_size=args.batch,
                                  seq_len=args.seq, num_images=0, remat=remat, compute_dtype="float32",
                                  freeze=("vision_encoder",))
            with contextlib.nullcontext() if args.no_mesh_context else jax.set_mesh(mesh):
                r = P.xla_train_step_memory(config)
            print(f"| {mesh_text} | {remat} | {r['argument_bytes']:,} | {r['planned_argument_bytes']:,} | "
                  f"{r['temp_bytes']:,} | {r['planned_temp_bytes']:,} | "
                  f"{r['temp_bytes'] / r['planned_temp_bytes']:.2f} |", flush=True)
>>>>>>> perf


if __name__ == "__main__":
    main()
