"""The planner (`memgen plan`) against XLA's compiled memory analysis of the real SFT train step on CPU devices:
argument bytes (params + optimizer state + batch) and temporaries (gradients + activations + XLA scratch), per
device, for several meshes and remat policies. Figures go to docs/plan.md.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python benchmarks/plan_vs_xla.py
    ... --no-mesh-context   # compile without jax.set_mesh: the model's activation constraints are then no-ops
    ... --images 1 [--train-vision] --meshes data=1,fsdp=1,tensor=1   # one 4-tile image per row

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


def measure(model: str = "small", batch: int = 8, seq: int = 128,
            meshes=("data=2,fsdp=2,tensor=2", "data=8,fsdp=1", "fsdp=2,tensor=4", "fsdp=8"),
            remats=P.REMATS, mesh_context: bool = True, images: int = 0, train_vision: bool = False):
    """Yields one dict per (mesh, remat): `launch.plan.xla_train_step_memory`'s result with the mesh and remat.
    With `mesh_context` the step is compiled under `jax.set_mesh`, which turns on the model's activation
    sharding constraints. `images` full-tile images per row; the vision encoder is frozen unless `train_vision`."""
    for mesh_text in meshes:
        mesh_config = MeshConfig.parse(mesh_text)
        devices = mesh_config.fixed_device_count(default=8)  # an axis of -1 takes the rest of 8
        mesh = make_mesh(mesh_config, jax.devices()[:devices])
        for remat in remats:
            config = P.PlanConfig(model=model, mesh=mesh_config, devices=devices, batch_size=batch,
                                  seq_len=seq, num_images=images, remat=remat, compute_dtype="float32",
                                  freeze=() if train_vision else ("vision_encoder",))
            with jax.set_mesh(mesh) if mesh_context else contextlib.nullcontext():
                yield {"mesh": mesh_text, "remat": remat, **P.xla_train_step_memory(config)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--meshes", nargs="*", default=["data=2,fsdp=2,tensor=2", "data=8,fsdp=1",
                                                        "fsdp=2,tensor=4", "fsdp=8"])
    parser.add_argument("--no-mesh-context", action="store_true")
    parser.add_argument("--images", type=int, default=0, help="full-tile images per row (default: text only)")
    parser.add_argument("--train-vision", action="store_true", help="train the vision encoder (default: frozen)")
    args = parser.parse_args()
    print("| mesh | remat | XLA arguments | planned | XLA temp | planned grads + activations | factor |")
    print("|---|---|---|---|---|---|---|")
    for r in measure(args.model, args.batch, args.seq, args.meshes, mesh_context=not args.no_mesh_context,
                     images=args.images, train_vision=args.train_vision):
        print(f"| {r['mesh']} | {r['remat']} | {r['argument_bytes']:,} | {r['planned_argument_bytes']:,} | "
              f"{r['temp_bytes']:,} | {r['planned_temp_bytes']:,} | "
              f"{r['temp_bytes'] / r['planned_temp_bytes']:.2f} |", flush=True)


if __name__ == "__main__":
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()  # before any XLA buffer is allocated; the same process then times the peer too
    main()
