"""The preset matrix of the paper's experiments: task (gp-l, gp-vl, virl-l, virl-vl) x stage (sft-init, sft-scale,
rl-scale, eval, eval-budgets) x size (the reference 11B run, and `-tiny` / `-small` CPU variants), registered in
launch/config.py's preset registry when this module is imported (launch.config imports it the first time a preset
is looked up). Names are ``<task>-<stage>`` (reference) and ``<task>-<stage>-<size>`` (CPU), e.g. gp-vl-sft-init,
gp-l-rl-scale-tiny. ``MATRIX`` lists every registered name with its (task, stage, size).

The pipeline of the paper (Section 5, Appendix C.2): SFT initialises the model (sft-init), then from that one
checkpoint compute is scaled either with more SFT (sft-scale) or with RL (rl-scale), and policies are evaluated
in-distribution, rule-OOD and (vision variants) visual-OOD at 5 verification steps (eval) or swept over 1, 3, 5
and 10 (eval-budgets, Figure 10). The stages find each other by a path convention: sft-scale starts from
``runs/<task>-sft-init[-size]/final`` and rl-scale from the run directory ``runs/<task>-sft-init[-size]``, so

    memgen sft --preset gp-l-sft-init --out runs/gp-l-sft-init
    memgen sft --preset gp-l-sft-scale --out runs/gp-l-sft-scale
    memgen rl  --preset gp-l-rl-scale  --out runs/gp-l-rl-scale
    memgen eval --preset gp-l-eval --out runs/gp-l-eval/rl init=runs/gp-l-rl-scale

runs the matrix's row for GP-L (override ``model=`` / ``init=`` to use other directories). Eval presets have no
default policy (``init=`` is required).

Reference values (notes/reference-protocol.md, "Training"): SFT full fine-tune, AdamW beta2 0.98, eps 1e-7,
cosine with 3 % warm-up, bf16, gradient checkpointing (remat="full"), batch 128 (16 per device x 8), lr 1e-6
(text) / 5e-7 (vision). RL: PPO without KL
or entropy terms, clip 0.1, 4 epochs, value loss 0.5 with value clipping, advantage normalisation, max grad norm
0.01, GAE gamma 0.9 lambda 0.95, Adam lr 1e-6 (V-IRL-VL 1e-7) eps 1e-7 cosine to 1e-9, 20 updates for GP,
sampling temperature 0.2, 512 new tokens (256 when evaluating), 5 verification steps for GP. Evaluation: 234
episodes per GP setting.

memgen's own choices where the reference gives no number (documented in docs/cli.md, "Preset matrix"): the SFT
step counts (sft-init 100 steps = one epoch of 12,800 examples; sft-scale 500 steps = one epoch of 64,000
examples, evaluated every 50 steps for the compute curve); the RL buffer: the reference collects 2,048 transitions
per update (256 per process x 8); memgen's buffer has episodes x budget transition slots, so rl-scale uses 400
episodes x 5 = 2,000 slots in minibatches of 80 (16 episodes), each accumulated over 10 microbatches of 8 (the
same gradient; what fits an 8-GPU H100 host, docs/plan.md); RL evaluates every 2 updates on 234 episodes.
The tiny/small CPU variants keep the structure and the PPO constants (clip, epochs, gamma, lambda, value
coefficient) and scale sizes, learning rates and gradient clipping to models trained from random init on a CPU.

V-IRL: the SFT stages for every size; rl-scale and eval for the reference runs (launch/rl_config.py's rl-virl-l,
rl-virl-vl, eval-virl-l, eval-virl-vl: 15 updates, 2 answers per decision, V-IRL-VL lr 1e-7) and for virl-l-tiny
(rl-virl-tiny, eval-virl-tiny); the paper sweeps the verification budget on GeneralPoints only, so V-IRL has no
eval-budgets stage, and there is no `small` V-IRL RL variant yet.
"""

from __future__ import annotations

import dataclasses

from launch.config import REFERENCE_MODEL_DIR, CheckpointConfig, SFTConfig, register_preset
from launch.rl_config import PAPER_PPO, EpisodeConfig, EvalConfig, RLConfig
from rl.ppo import PPOConfig
from sft.optim import OptimizerConfig

TASKS = {"gp-l": ("general_points", "language"), "gp-vl": ("general_points", "vision"),
         "virl-l": ("virl", "language"), "virl-vl": ("virl", "vision")}
SIZES = ("reference", "tiny", "small")
STAGES = ("sft-init", "sft-scale", "rl-scale", "eval", "eval-budgets")
RUNS_DIR = "runs"
EVAL_BUDGETS = (1, 3, 5, 10)

# name -> (task, stage, size) of every preset this module registers
MATRIX: dict[str, tuple[str, str, str]] = {}


def preset_name(task: str, stage: str, size: str = "reference") -> str:
    return f"{task}-{stage}" if size == "reference" else f"{task}-{stage}-{size}"


def _init_run(task: str, size: str) -> str:
    """The run directory of the task's sft-init stage (the path convention the later stages start from)."""
    return f"{RUNS_DIR}/{preset_name(task, 'sft-init', size)}"


# --- SFT --------------------------------------------------------------------------------------------------------

def _reference_lr(task: str) -> float:
    return 5e-7 if task.endswith("-vl") else 1e-6


def sft_config(task: str, stage: str, size: str) -> SFTConfig:
    """The SFT config of (task, sft-init | sft-scale, size)."""
    name, modality = TASKS[task]
    scale = stage == "sft-scale"
    if size == "reference":
        # with an image, 128 examples accumulated 16 at a time (the same gradient): 16 per GPU of an 8-GPU host
        # would hold the vision layer's attention over 4 tiles, (16, 16, 6432, 6432) in bf16 + fp32, ~59 GiB, on
        # top of the rest (memgen plan: 119 GiB per device, 37 with 8 microbatches; docs/plan.md)
        base = SFTConfig(model=REFERENCE_MODEL_DIR, batch_size=128, compute_dtype="bfloat16", remat="full",
                         grad_accum_steps=8 if modality == "vision" else 1,
                         steps=500 if scale else 100, train_examples=64_000 if scale else 12_800,
                         eval_examples=256, eval_every=50, max_new_tokens=256,
                         greedy_examples=48 if name == "virl" else 234,  # the paper: 48 routes, 234 hands
                         optimizer=OptimizerConfig(lr=_reference_lr(task)))
    elif size == "tiny":
        base = SFTConfig(model="tiny", steps=40 if scale else 20, batch_size=4, train_examples=128 if scale else 64,
                         eval_examples=16, eval_every=10, greedy_examples=4, max_new_tokens=48,
                         compute_dtype="float32", mesh=(1, 1, 1), optimizer=OptimizerConfig(lr=1e-3),
                         checkpoint=CheckpointConfig(every_steps=10, keep=2))
    else:
        base = SFTConfig(model="small", steps=200 if scale else 100, batch_size=8,
                         train_examples=1600 if scale else 800, eval_examples=64, eval_every=20 if scale else 25,
                         greedy_examples=32, max_new_tokens=96, compute_dtype="float32", mesh=(1, 1, 1),
                         optimizer=OptimizerConfig(lr=5e-4), checkpoint=CheckpointConfig(every_steps=20, keep=2))
    model = f"{_init_run(task, size)}/final" if scale else base.model
    return dataclasses.replace(base, task=name, modality=modality, model=model)


# --- RL and evaluation (GeneralPoints) ---------------------------------------------------------------------------

def _episodes(task: str, size: str, *, evaluation: bool) -> EpisodeConfig:
    _, modality = TASKS[task]
    if size == "reference":
        # the cache grown per verification step: a turn's decode reads what the conversation holds so far
        return EpisodeConfig(modality=modality, max_verify_steps=5, max_new_tokens=256 if evaluation else 512,
                             temperature=0.0 if evaluation else 0.2, cache_stages=5)
    if size == "tiny":  # the rl-tiny shapes and its learnable "digits" reward (a random tiny model never solves GP)
        return EpisodeConfig(modality=modality, max_verify_steps=2, max_new_tokens=8, feedback_len=160,
                             reward="digits", temperature=0.0 if evaluation else 1.0)
    return EpisodeConfig(modality=modality, max_verify_steps=5, max_new_tokens=64, feedback_len=160,
                         temperature=0.0 if evaluation else 1.0)


def rl_config(task: str, size: str) -> RLConfig:
    """The rl-scale config of a GeneralPoints task: PPO from the task's sft-init run."""
    episodes = _episodes(task, size, evaluation=False)
    init = _init_run(task, size)
    if size == "reference":
        return RLConfig(init=init, updates=20, episodes_per_update=400, episodes=episodes, eval_every=2,
                        eval_episodes=234, ppo=dataclasses.replace(PAPER_PPO, minibatch_size=80, microbatches=10,
                                                                  skip_padding=True),
                        compute_dtype="bfloat16", remat="full")
    if size == "tiny":
        return RLConfig(init=init, updates=12, episodes_per_update=8, episodes=episodes, eval_every=4,
                        eval_episodes=8, ppo=PPOConfig(minibatch_size=8, learning_rate=1e-2, final_learning_rate=1e-3,
                                                       max_grad_norm=1.0),
                        checkpoint=CheckpointConfig(every_steps=2, keep=2, async_save=False))
    return RLConfig(init=init, updates=20, episodes_per_update=16, episodes=episodes, eval_every=5, eval_episodes=32,
                    ppo=PPOConfig(minibatch_size=16, learning_rate=1e-4, final_learning_rate=1e-6, max_grad_norm=1.0),
                    checkpoint=CheckpointConfig(every_steps=5, keep=2, async_save=False))


def eval_config(task: str, stage: str, size: str) -> EvalConfig:
    """eval (budget 5; tiny: 2) or eval-budgets (1, 3, 5, 10; tiny: 1, 2) of a GeneralPoints task, on
    in-distribution, rule-OOD and, for the vision variant, visual-OOD."""
    episodes = _episodes(task, size, evaluation=True)
    splits = ("in_distribution", "rule_ood") + (("visual_ood",) if task.endswith("-vl") else ())
    if size == "tiny":
        budgets = (1, 2) if stage == "eval-budgets" else (2,)
    else:
        budgets = EVAL_BUDGETS if stage == "eval-budgets" else (5,)
    count = {"reference": 234, "tiny": 4, "small": 64}[size]
    return EvalConfig(init="", episodes=count, verify_budgets=budgets, splits=splits, sampling=episodes,
                      compute_dtype="bfloat16" if size == "reference" else "float32")


# --- RL and evaluation (V-IRL): launch/rl_config.py's V-IRL presets, started from the task's sft-init run ---------

_VIRL_PRESETS = {("virl-l", "reference"): ("rl-virl-l", "eval-virl-l"),
                 ("virl-vl", "reference"): ("rl-virl-vl", "eval-virl-vl"),
                 ("virl-l", "tiny"): ("rl-virl-tiny", "eval-virl-tiny")}


def _virl_cpu_episodes(task: str, size: str, *, evaluation: bool) -> EpisodeConfig:
    """The CPU variants of a V-IRL task: the rl-virl-tiny episodes in the task's modality (tiny), or the `small`
    model's (both with 1,536 prompt tokens for -vl): 2-4-step routes, 4 decision points per row, 96 new tokens (an expert answer is ~60 tokens with the
    offline tokenizer), sampling temperature 1 (greedy in evaluation)."""
    from launch.config import get_preset

    tiny = get_preset("rl-virl-tiny", RLConfig).episodes
    modality = TASKS[task][1]
    if modality == "vision":  # the vision prompt's wording is longer (1,299 tokens measured on a training route)
        tiny = dataclasses.replace(tiny, prompt_len=1536)
    if size == "tiny":
        episodes = dataclasses.replace(tiny, modality=modality)
    else:
        episodes = dataclasses.replace(tiny, modality=modality, max_new_tokens=96, decision_points=4,
                                       train_routes=64, max_route_steps=4, temperature=1.0)
    return dataclasses.replace(episodes, temperature=0.0) if evaluation else episodes


def virl_rl_config(task: str, size: str) -> RLConfig:
    """The rl-scale config of a V-IRL task: rl-virl-l / rl-virl-vl / rl-virl-tiny from its sft-init run, and the
    CPU variants without a preset of their own (virl-vl tiny: rl-virl-tiny with images; small: the small model)."""
    from launch.config import get_preset

    init = _init_run(task, size)
    if (task, size) in _VIRL_PRESETS:
        return dataclasses.replace(get_preset(_VIRL_PRESETS[task, size][0], RLConfig), init=init)
    episodes = _virl_cpu_episodes(task, size, evaluation=False)
    if size == "tiny":
        return dataclasses.replace(get_preset("rl-virl-tiny", RLConfig), init=init, episodes=episodes)
    # 8 rows x 4 decision points x 3 answer slots = 96 transition slots per update, minibatches of 16
    return RLConfig(init=init, updates=15, episodes_per_update=8, episodes=episodes, eval_every=5, eval_episodes=16,
                    ppo=PPOConfig(minibatch_size=16, learning_rate=1e-4, final_learning_rate=1e-6, max_grad_norm=1.0),
                    checkpoint=CheckpointConfig(every_steps=5, keep=2, async_save=False))


def virl_eval_config(task: str, size: str) -> EvalConfig:
    """The eval config of a V-IRL task (eval-virl-l / eval-virl-vl / eval-virl-tiny, and the CPU variants above;
    init= required). -vl adds the visual-OOD split (the 9-city set)."""
    from launch.config import get_preset

    if (task, size) in _VIRL_PRESETS:
        return dataclasses.replace(get_preset(_VIRL_PRESETS[task, size][1], EvalConfig), init="")
    splits = ("in_distribution", "rule_ood") + (("visual_ood",) if task.endswith("-vl") else ())
    return EvalConfig(init="", episodes=2 if size == "tiny" else 16, verify_budgets=(2,), splits=splits,
                      sampling=_virl_cpu_episodes(task, size, evaluation=True))


def _register_all() -> None:
    for task, (name, _) in TASKS.items():
        for size in SIZES:
            entries = {stage: (lambda t=task, st=stage, sz=size: sft_config(t, st, sz))
                       for stage in ("sft-init", "sft-scale")}
            if name == "general_points":
                entries["rl-scale"] = lambda t=task, sz=size: rl_config(t, sz)
                for stage in ("eval", "eval-budgets"):
                    entries[stage] = lambda t=task, st=stage, sz=size: eval_config(t, st, sz)
            else:  # V-IRL: 2 answers per decision, no budget sweep in the paper
                entries["rl-scale"] = lambda t=task, sz=size: virl_rl_config(t, sz)
                entries["eval"] = lambda t=task, sz=size: virl_eval_config(t, sz)
            for stage, make in entries.items():
                preset = preset_name(task, stage, size)
                register_preset(preset, make)
                MATRIX[preset] = (task, stage, size)


_register_all()
# The paper's GeneralPoints RL under the names `memgen rl --help` lists: the reference cells, init=DIR required.
for _task in ("gp-l", "gp-vl"):
    register_preset(f"rl-{_task}", lambda t=_task: dataclasses.replace(rl_config(t, "reference"), init=""))
