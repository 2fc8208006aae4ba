"""The preset matrix (launch/presets.py): every (task, stage, size) is registered and resolves through its command's
kind, the reference hyperparameters of notes/reference-protocol.md, the stages' path convention, and the CPU
variants' shapes being consistent (buffer sizes divisible by the minibatch). No runs: resolution only."""

from __future__ import annotations

import dataclasses

import pytest

from launch.config import SFTConfig, get_preset, resolve
from launch.presets import MATRIX, SIZES, TASKS
from launch.rl_config import EvalConfig, RLConfig

KIND = {"sft-init": SFTConfig, "sft-scale": SFTConfig, "rl-scale": RLConfig, "eval": EvalConfig,
        "eval-budgets": EvalConfig}


def test_the_matrix_lists_every_task_stage_and_size():
    expected = set()
    for task, (name, _) in TASKS.items():
        stages = ["sft-init", "sft-scale"] + (["rl-scale", "eval", "eval-budgets"] if name == "general_points" else [])
        for stage in stages:
            for size in SIZES:
                expected.add((task, stage, size))
    # V-IRL RL and evaluation: every variant and size (no budget sweep: the paper sweeps it on GeneralPoints)
    expected |= {(task, stage, size) for task in ("virl-l", "virl-vl") for size in SIZES
                 for stage in ("rl-scale", "eval")}
    assert set(MATRIX.values()) == expected and len(MATRIX) == 54
    assert "gp-vl-sft-init" in MATRIX and "virl-vl-sft-scale-small" in MATRIX and "gp-l-eval-budgets-tiny" in MATRIX
    virl = resolve("virl-vl-rl-scale", [], kind=RLConfig)
    assert virl.init == "runs/virl-vl-sft-init" and virl.episodes.task == "virl" and virl.updates == 15
    assert virl.ppo.learning_rate == 1e-7 and virl.episodes.max_verify_steps == 2
    for size in ("tiny", "small"):  # the CPU variants of V-IRL-VL evaluate visual OOD with images
        vl = resolve(f"virl-vl-eval-{size}", [], kind=EvalConfig)
        assert vl.sampling.modality == "vision" and "visual_ood" in vl.splits and vl.sampling.task == "virl"
        assert resolve(f"virl-vl-rl-scale-{size}", [], kind=RLConfig).init == f"runs/virl-vl-sft-init-{size}"


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_every_preset_resolves_through_its_command(name):
    task, stage, size = MATRIX[name]
    config = resolve(name, [], kind=KIND[stage])
    modality = TASKS[task][1]
    if KIND[stage] is SFTConfig:
        assert (config.task, config.modality) == TASKS[task]
        assert config.steps >= 1 and config.batch_size % config.grad_accum_steps == 0
    elif KIND[stage] is RLConfig:
        assert config.episodes.modality == modality
        from launch.rl_run import transitions_per_update
        assert transitions_per_update(config) % config.ppo.minibatch_size == 0  # what memgen rl checks
    else:
        assert config.sampling.modality == modality and config.init == ""
        assert ("visual_ood" in config.splits) == (modality == "vision")
        assert config.sampling.temperature == 0.0


def test_existing_preset_names_still_work():
    import launch.rl_config  # noqa: F401

    for name in ("sft-gp-l", "sft-gp-vl", "sft-virl-l", "sft-virl-vl", "sft-tiny", "tiny-gp-l", "tiny-gp-vl",
                 "rl-gp-l", "rl-gp-vl", "rl-tiny", "eval-gp-l", "eval-gp-vl", "eval-tiny"):
        get_preset(name)


@pytest.mark.parametrize("task", list(TASKS))
def test_reference_sft_hyperparameters(task):
    for stage in ("sft-init", "sft-scale"):
        config = get_preset(f"{task}-{stage}")
        optimizer = config.optimizer
        assert optimizer.lr == (5e-7 if task.endswith("-vl") else 1e-6)
        assert (optimizer.name, optimizer.beta2, optimizer.eps, optimizer.schedule, optimizer.warmup_fraction) == (
            "adamw", 0.98, 1e-7, "cosine", 0.03)
        assert config.batch_size == 128 and config.compute_dtype == "bfloat16" and config.freeze == ()
    init, scale = get_preset(f"{task}-sft-init"), get_preset(f"{task}-sft-scale")
    assert init.model == "checkpoints/Llama-3.2-11B-Vision-Instruct"
    assert scale.model == f"runs/{task}-sft-init/final"  # more SFT from the sft-init checkpoint
    assert (init.steps, init.train_examples, scale.steps, scale.train_examples) == (100, 12_800, 500, 64_000)
    assert get_preset(f"{task}-sft-scale-tiny").model == f"runs/{task}-sft-init-tiny/final"


@pytest.mark.parametrize("task", ["gp-l", "gp-vl"])
def test_reference_rl_and_eval_hyperparameters(task):
    config = get_preset(f"{task}-rl-scale")
    ppo = config.ppo
    assert config.init == f"runs/{task}-sft-init" and config.algorithm == "ppo" and config.updates == 20
    assert (ppo.clip_eps, ppo.value_clip_eps, ppo.epochs, ppo.vf_coef, ppo.max_grad_norm) == (0.1, 0.1, 4, 0.5, 0.01)
    assert (ppo.gae.gamma, ppo.gae.lam) == (0.9, 0.95)
    assert (ppo.learning_rate, ppo.final_learning_rate, ppo.adam_eps) == (1e-6, 1e-9, 1e-7)
    assert ppo.kl_mode is None and ppo.entropy_coef == 0.0 and ppo.advantage_normalization == "buffer"
    assert ppo.answer_key_weight == 0.5  # the reference's weight on the tokens before "formula"
    assert get_preset(f"rl-{task}") == dataclasses.replace(config, init="")  # one definition of the paper's RL
    episodes = config.episodes
    assert (episodes.max_verify_steps, episodes.temperature, episodes.max_new_tokens, episodes.reward) == (
        5, 0.2, 512, "task")
    assert config.episodes_per_update * episodes.max_verify_steps == 2000  # ~ the reference's 2,048 per update
    assert episodes.modality == ("vision" if task == "gp-vl" else "language")
    evaluation, budgets = get_preset(f"{task}-eval"), get_preset(f"{task}-eval-budgets")
    assert evaluation.verify_budgets == (5,) and budgets.verify_budgets == (1, 3, 5, 10)
    assert evaluation.episodes == budgets.episodes == 234 and evaluation.sampling.max_new_tokens == 256
    assert evaluation.splits == (("in_distribution", "rule_ood", "visual_ood") if task == "gp-vl"
                                 else ("in_distribution", "rule_ood"))


def test_cpu_variants_keep_the_ppo_constants_and_chain_their_stages():
    for size in ("tiny", "small"):
        config = get_preset(f"gp-l-rl-scale-{size}")
        assert config.init == f"runs/gp-l-sft-init-{size}"
        assert (config.ppo.clip_eps, config.ppo.epochs, config.ppo.gae.gamma, config.ppo.gae.lam) == (0.1, 4, 0.9, 0.95)
        sft = get_preset(f"gp-l-sft-init-{size}")
        assert sft.model == size and sft.compute_dtype == "float32" and sft.mesh == (1, 1, 1)
    # the tiny stages have the shapes of the presets the tests already run (sft-tiny, rl-tiny, eval-tiny)
    assert get_preset("gp-l-sft-init-tiny") == get_preset("sft-tiny")
    assert get_preset("gp-l-rl-scale-tiny").episodes == get_preset("rl-tiny").episodes
    assert get_preset("gp-l-eval-tiny").sampling == get_preset("eval-tiny").sampling
