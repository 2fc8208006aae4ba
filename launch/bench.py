"""`memgen bench`: run the benchmark scripts' measurement functions (benchmarks/*.py, imported, not copied) and
write their figures as one JSON file and one markdown table, each figure next to its peer (transformers,
transformers + torch AdamW, XLA's memory analysis, or the documented goal) with the ratio, compile seconds apart,
and a description of the machine.

    memgen bench --out bench/ [--only verifier,sampler] [--preset tiny|small] [--quick]

Benchmarks (`--only` names): verifier (GeneralPoints verifier and hand sampler), sampler (KV-cached generate vs
transformers' generate), sft_step (the SFT train step vs transformers + torch AdamW), ppo_update (one PPO update,
rl.ppo_update, vs transformers + a torch value head + torch Adam on the same buffer and minibatches),
conversation_rows (the PPO update over a real rollout as conversation rows vs per-transition rows), episode (GP-L
rollout episodes/s and the share of rollout time outside generation; the sampler's multi-turn episode: a later
turn's cost over the first and the cached episode against recomputing the context), vision_encoder,
text_decoder, planner (`memgen plan` vs XLA's compiled memory analysis; needs 8 devices: on a CPU the command
asks for 8 virtual devices itself). On a GPU machine the scripts' GPU parts run too (sampler decode roofline,
SFT MFU). A benchmark whose script is missing or fails is recorded with its error and the others still run.
Output: OUT/bench.json ({"machine": ..., "rows": [...]}) and OUT/bench.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    """benchmarks/<name>.py as a module (the repository root goes on sys.path when it is not there)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(f"benchmarks.{name}")


def _on_gpu() -> bool:
    import jax
    return jax.default_backend() == "gpu"


def row(name: str, config: str, memgen: float | None, unit: str, peer: float | None = None,
        peer_name: str | None = None, compile_s: float | None = None, higher_is_better: bool = True,
        raw: dict | None = None) -> dict[str, Any]:
    """One table row; ratio = memgen / peer when higher is better (a speed-up), else peer / memgen."""
    ratio = None
    if memgen and peer:
        ratio = memgen / peer if higher_is_better else peer / memgen
    return {"name": name, "config": config, "memgen": memgen, "unit": unit, "peer": peer, "peer_name": peer_name,
            "ratio": ratio, "compile_s": compile_s, "raw": raw or {}}


# --- one function per benchmark: (preset, quick) -> rows ------------------------------------------------------

def bench_verifier(preset: str, quick: bool) -> list[dict]:
    script = _script("bench_general_points")
    if quick:
        figures = script.measure(0.2, hands_per_round=20_000, kinds=("typical",), splits=("in-distribution",))
    else:
        figures = script.measure(2.0)
    rows = [row(f"verify {name}", "one Python thread, best round", cpu, "verifications/CPU-s", 50_000.0, "goal",
                raw={"per_wall_s": wall}) for name, (cpu, wall) in figures["verify"].items()]
    rows += [row(f"sample hands {name}", "after cache warm-up", cpu, "hands/CPU-s", 100_000.0, "goal",
                 raw={"per_wall_s": wall}) for name, (cpu, wall) in figures["sample"].items()]
    return rows


def bench_sampler(preset: str, quick: bool) -> list[dict]:
    script = _script("bench_sampler")
    args = argparse.Namespace(preset=preset, batch=2 if quick else 8, prompt=16 if quick else 128, images=1,
                              new_tokens=4 if quick else 64, repeats=1 if quick else 3)
    r = script.bench_cpu(args)
    config = f"{preset}, batch {args.batch}, prompt {args.prompt}, 1 image, {args.new_tokens} new tokens, greedy"
    rows = [row("sampler generate (CPU)", config, r["memgen_tokens_per_s"], "new tokens/s",
                r["transformers_tokens_per_s"], "transformers generate", r["memgen_compile_s"], raw=r)]
    if _on_gpu():
        gpu_args = argparse.Namespace(preset=preset if quick else "11b", batch=8 if quick else 64, prompt=128,
                                      images=1, new_tokens=16 if quick else 64, repeats=1 if quick else 3,
                                      image_chunk=4, hbm_tbps=None)
        g = script.bench_gpu(gpu_args)
        rows.append(row("sampler decode (GPU)", f"{gpu_args.preset}, batch {gpu_args.batch}, bf16",
                        g["decode_tokens_per_s"], "new tokens/s", g["roofline_share"], "HBM roofline share",
                        g["decode_compile_s"], raw=g))
        rows[-1]["ratio"] = g["roofline_share"]
    return rows


def bench_sft_step(preset: str, quick: bool) -> list[dict]:
    try:
        script = _script("sft_train")
    except ModuleNotFoundError as error:
        raise RuntimeError(f"benchmarks/sft_train.py is not available in this checkout ({error})") from None
    args = argparse.Namespace(preset=preset, batch=2 if quick else 8, seq=32 if quick else 128,
                              repeats=1 if quick else 3)
    r = script.cpu_benchmark(args)
    rows = [row("SFT train step (CPU)", f"{preset}, batch {args.batch} x {args.seq} tokens, 1 image, fp32",
                r["memgen_tokens_per_s"], "train tokens/s", r["transformers_tokens_per_s"],
                "transformers + torch AdamW", r["memgen_compile_s"], raw=r)]
    if _on_gpu():
        shape = dict(layers=5, batch=2, seq=256) if quick else script.GPU_SHAPE  # the full one fits one H100
        # attention in blocks of 1024 queries, as benchmarks/device_checks.sh: all at once, XLA's CPU analysis of
        # the full shape does not fit an H100 (docs/benchmarks.md)
        gpu_args = argparse.Namespace(shape_preset=preset if quick else "11b", **shape, remat="full",
                                      attention_block=1024, freeze_vision=False, peak_tflops=None,
                                      repeats=1 if quick else 3)
        g = script.gpu_benchmark(gpu_args)
        rows.append(row("SFT train step (GPU)", f"{gpu_args.shape_preset}-shaped, {gpu_args.layers} layers, batch "
                        f"{gpu_args.batch} x {gpu_args.seq}, bf16, remat full, attention blocks of 1024",
                        g["tokens_per_s"], "train tokens/s", g["mfu"], "MFU", g["compile_s"], raw=g))
        rows[-1]["ratio"] = g["mfu"]
    return rows


def bench_ppo_update(preset: str, quick: bool) -> list[dict]:
    script = _script("bench_ppo_update")
    if quick:
        sizes = dict(episodes=2, steps=2, prompt=16, response=8, minibatch=2, repeats=1)
    else:
        sizes = dict(episodes=4, steps=4, prompt=128, response=64, minibatch=8, repeats=1)
    r = script.measure(preset, **sizes)
    config = (f"{preset}, {r['transitions']} transitions x ({r['prompt_tokens']} prompt + {r['response_tokens']} "
              f"response tokens), text only, {r['epochs']} epochs x minibatch {r['minibatch_size']}, fp32")
    return [row("PPO update (CPU)", config, r["memgen_tokens_per_s"], "train tokens/s",
                r["transformers_tokens_per_s"], "transformers + torch Adam", r["memgen_compile_s"], raw=r)]


def bench_conversation_rows(preset: str, quick: bool) -> list[dict]:
    script = _script("bench_conversation_rows")
    if quick:
        sizes = dict(episodes=2, verify_steps=2, max_new_tokens=4, feedback_len=16, minibatch_rows=1, repeats=1)
    else:
        sizes = dict(episodes=8, verify_steps=5, max_new_tokens=64, feedback_len=64, minibatch_rows=2, repeats=1)
    r = script.measure(preset, **sizes)
    config = (f"GP-L, {preset}, one rollout of {r['episodes']} episodes x {r['verify_steps']} turns "
              f"({r['valid_transitions']} transitions), {r['epochs']} epoch, skip_padding")
    rows = r["rows"]
    return [row("PPO update: conversation rows (CPU)", config, rows["update_s"], "s", r["transitions"]["update_s"],
                "per-transition rows", rows["compile_s"], higher_is_better=False, raw=r)]


def bench_episode(preset: str, quick: bool) -> list[dict]:
    rollout = _script("bench_rollout")
    if quick:
        r = rollout.measure(preset, episodes=2, verify_steps=2, max_new_tokens=4, feedback_len=128, repeats=1)
    else:
        r = rollout.measure(preset, episodes=8, verify_steps=5, max_new_tokens=64, feedback_len=128, repeats=1)
    config = (f"GP-L, {preset}, {r['episodes']} episodes, {r['verify_steps']} verification steps, "
              f"{r['max_new_tokens']} new tokens, temperature 1")
    rows = [row("rollout episodes", config, r["episodes_per_second"], "episodes/s",
                compile_s=round(r["first_call_seconds"] - r["rollout_seconds"], 2), raw=r),
            row("rollout time outside generation", config, 100 * r["share_outside_generation"], "% of wall time",
                10.0, "goal", higher_is_better=False, raw=r)]
    sampler_script = _script("bench_sampler")
    args = argparse.Namespace(preset=preset, batch=2 if quick else 8, prompt=16 if quick else 128, images=1,
                              new_tokens=4 if quick else 64, turns=2 if quick else 5, feedback=8 if quick else 32,
                              repeats=1, recompute=not quick)
    e = sampler_script.bench_episode(args)
    config = (f"{preset}, batch {args.batch}, prompt {args.prompt} + 1 image, {args.turns} turns x "
              f"{args.new_tokens} tokens, {args.feedback}-token feedback")
    rows.append(row("episode: later turn / first turn", config, e["max_later_turn_over_first"],
                    "x first turn's seconds", 1.5, "goal", higher_is_better=False, raw=e))
    rows[-1]["compile_s"] = round(e["compile_and_first_episode_s"] - e["episode_s"], 2)
    if e["recompute_episode_s"]:
        rows.append(row("episode: recomputed / cached seconds", config, e["recompute_episode_s"] / e["episode_s"],
                        "x", raw=e))
    return rows


def bench_vision_encoder(preset: str, quick: bool) -> list[dict]:
    script = _script("vision_encoder")
    dtypes = ("float32", "bfloat16") if _on_gpu() else ("float32",)
    rows = []
    for dtype in dtypes:
        r = script.measure(preset, batch=1 if quick else 2, images=1, dtype=dtype, repeats=2 if quick else 5)
        rows.append(row(f"vision encoder ({r['device']})", f"{preset}, batch {r['batch']}, {dtype}",
                        r["images_per_s"], "images/s", compile_s=r["compile_s"], raw=r))
    return rows


def bench_text_decoder(preset: str, quick: bool) -> list[dict]:
    script = _script("text_decoder")
    dtypes = ("float32", "bfloat16") if _on_gpu() else ("float32",)
    rows = []
    for dtype in dtypes:
        r = script.measure(preset, batch=2 if quick else 4, prompt=16 if quick else 128, steps=4 if quick else 32,
                           dtype=dtype, repeats=1 if quick else 3)
        config = f"{preset}, batch {r['batch']}, prompt {r['prompt']}, {dtype}, {r['device']}"
        rows.append(row("text decoder forward", config, r["forward_tokens_per_s"], "tokens/s",
                        compile_s=r["compile_s"]["forward"], raw=r))
        rows.append(row("text decoder cached decode", config, r["decode_tokens_per_s"], "tokens/s",
                        compile_s=r["compile_s"]["decode"], raw=r))
    return rows


def bench_planner(preset: str, quick: bool) -> list[dict]:
    import jax
    if len(jax.devices()) < 8:
        raise RuntimeError(f"the planner check needs 8 devices, this process has {len(jax.devices())}; run with "
                           "JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8")
    script = _script("plan_vs_xla")
    meshes = ("data=2,fsdp=2,tensor=2",) if quick else ("data=2,fsdp=2,tensor=2", "data=8,fsdp=1",
                                                        "fsdp=2,tensor=4", "fsdp=8")
    remats = ("full",) if quick else ("none", "dots", "full")
    rows = []
    for r in script.measure(preset, batch=8, seq=32 if quick else 128, meshes=meshes, remats=remats):
        config = f"{preset}, {r['mesh']}, remat {r['remat']}, batch 8 x {32 if quick else 128}"
        rows.append(row("plan: arguments bytes/device", config, r["planned_argument_bytes"], "bytes",
                        r["argument_bytes"], "XLA memory analysis", higher_is_better=False, raw=r))
        rows.append(row("plan: temporaries bytes/device", config, r["planned_temp_bytes"], "bytes",
                        r["temp_bytes"], "XLA memory analysis", higher_is_better=False, raw=r))
    return rows


# The planner runs last: its script sets CPU-only defaults for a process that has not started JAX yet.
BENCHMARKS: dict[str, Callable[[str, bool], list[dict]]] = {
    "verifier": bench_verifier, "sampler": bench_sampler, "sft_step": bench_sft_step, "ppo_update": bench_ppo_update,
    "conversation_rows": bench_conversation_rows, "episode": bench_episode, "vision_encoder": bench_vision_encoder,
    "text_decoder": bench_text_decoder, "planner": bench_planner,
}


def machine() -> dict[str, Any]:
    """Where the figures were measured: OS, Python, CPU (lscpu's model name and CPU count), JAX devices."""
    import jax

    from launch.hugepages import huge_pages_on
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "load_average": os.getloadavg()[0], "jax": jax.__version__,
                            "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
                            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                            "huge_pages": huge_pages_on()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu_model"] = fields.get("Model name", "").strip()
        info["lscpu_cpus"] = fields.get("CPU(s)", "").strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return info


def _figure(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def markdown(result: dict) -> str:
    m = result["machine"]
    devices = ", ".join(sorted(set(m["devices"])))
    lines = [f"# memgen bench ({result['preset']} preset{', quick' if result['quick'] else ''})", "",
             f"{m['date']}; {m.get('cpu_model') or m['processor']}, {m['cpu_count']} CPUs "
             f"(load {m['load_average']:.2f}); "
             f"{m['platform']}; Python {m['python']}, jax {m['jax']}; devices: {devices} x {len(m['devices'])}; "
             f"malloc huge pages {'on' if m.get('huge_pages') else 'off'} (launch.hugepages)", "",
             "| name | config | memgen | peer | ratio | compile s |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        peer = f"{_figure(r['peer'], r['unit'] if r['peer_name'] not in ('MFU', 'HBM roofline share') else '')}" \
               f" ({r['peer_name']})" if r["peer"] is not None else ""
        ratio = f"{r['ratio']:.3g}" if r["ratio"] is not None else ""
        compile_s = f"{r['compile_s']:.2f}" if r["compile_s"] is not None else ""
        lines.append(f"| {r['name']} | {r['config']} | {_figure(r['memgen'], r['unit'])} | {peer} | {ratio} | "
                     f"{compile_s} |")
    for name, error in result["errors"].items():
        lines.append(f"| {name} | not run: {error} | | | | |")
    return "\n".join(lines) + "\n"


def run_benchmarks(names: list[str], preset: str, quick: bool, log=print) -> dict:
    rows, errors, seconds = [], {}, {}
    for name in names:
        start = time.perf_counter()
        log(f"bench {name} ...")
        try:
            rows.extend(BENCHMARKS[name](preset, quick))
        except Exception as error:  # one failing benchmark must not lose the others' figures
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            log(f"bench {name} failed:\n{traceback.format_exc()}")
        seconds[name] = round(time.perf_counter() - start, 2)
    return {"preset": preset, "quick": quick, "machine": machine(), "rows": rows, "errors": errors,
            "seconds": seconds}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder for bench.json and bench.md")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--preset", default="small", choices=["tiny", "small"], help="model preset of the CPU parts")
    parser.add_argument("--quick", action="store_true", help="few repeats, small shapes (a smoke run)")


def run(args: argparse.Namespace) -> int:
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    # Always in BENCHMARKS' order: the torch peers are timed before XLA's CPU runtime has run in this process
    # (torch ran much slower after it on a 2-core machine; docs/benchmarks.md, sampler section).
    names = [n for n in BENCHMARKS if n in names]
    if unknown or not names:
        print(f"memgen bench: unknown benchmark {', '.join(unknown) or '(none given)'}; choose from "
              f"{', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    # 8 virtual CPU devices for the planner check, when JAX has not started a backend yet (no effect on GPUs).
    if "planner" in names and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_force_host_platform_device_count=8").strip()
    result = run_benchmarks(names, args.preset, args.quick, log=lambda text: print(text, file=sys.stderr))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    (out / "bench.md").write_text(table)
    print(table)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 1 if result["errors"] else 0
