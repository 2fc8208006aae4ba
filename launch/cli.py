"""The `memgen` command line: post-training of Llama 3.2 Vision that tells memorisation from generalisation.

Each subcommand lives in its own module with `add_arguments(parser)` and
`run(args) -> int`; this file only dispatches, importing a subcommand's module when it is used."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("launch.demo", "run the embedded default end to end on a CPU and write a report"),
    "report": ("launch.report", "figures (PNG) and report.md from runs' metrics.jsonl"),
    "predict": ("launch.predict", "R^2 and Spearman of pre-RL predictors vs post-RL success"),
    "sft": ("launch.sft_run", "supervised fine-tuning from expert data, resumable"),
    "plan": ("launch.plan", "bytes per device for params, gradients, optimizer state, KV cache and activations "
             "on a mesh, and whether it fits a GPU"),
    "data": ("launch.data_cmd", "write a task's expert data or evaluation instances as JSONL (+ PNGs for vision)"),
    "convert": ("launch.convert", "convert params between a Hugging Face mllama directory and an Orbax checkpoint"),
    "bench": ("launch.bench", "run the benchmarks (benchmarks/*.py) and write a JSON file and a markdown table"),
    "rl": ("launch.rl_run", "PPO with multi-turn revision rollouts from an SFT run, a HF directory or a preset"),
    "eval": ("launch.eval_run", "success per split and verification budget (and pass@k) of a policy"),
    "sweep": ("launch.sweep", "a resumable grid over SFT learning rates (vmapped) x freezing sets x verification "
              "budgets, with a summary table and plots"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memgen", description=__doc__.splitlines()[0],
                                     epilog="Multi-host: every host runs the same command; the options below (or "
                                            "MEMGEN_COORDINATOR / MEMGEN_NUM_PROCESSES / MEMGEN_PROCESS_ID) say "
                                            "which process this is (docs/multihost.md).")
    hosts = parser.add_argument_group("multi-host (before COMMAND; default: the MEMGEN_* environment, else one host)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (MEMGEN_COORDINATOR)")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (MEMGEN_NUM_PROCESSES)")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process's rank 0..N-1 (MEMGEN_PROCESS_ID)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def join_hosts(args: argparse.Namespace) -> bool:
    """Join the multi-host run the flags or the environment describe (`launch.mesh.initialize`; nothing for one
    process) before the command touches a device. False, after one sentence on stderr, for a bad setting."""
    from launch.mesh import DistributedConfig, MeshError, initialize

    try:
        initialize(DistributedConfig.from_env(coordinator_address=args.coordinator,
                                              num_processes=args.num_processes, process_id=args.process_id))
    except MeshError as error:
        print(f"memgen: {error}", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    if not join_hosts(args):
        return 2
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `memgen` console script: `main` in a process whose malloc asks for huge pages (launch.hugepages)."""
    from launch.hugepages import reexec_with_huge_pages

    reexec_with_huge_pages()
    sys.exit(main())


if __name__ == "__main__":
    entry()
