"""The evaluation hooks of an SFT run: the held-out generalisation loss (a token mean over a held-out expert set,
the "Quagmires" predictor) and greedy success on the task's evaluation splits (one greedy answer per hand,
judged by the task's verifier, success rate with its binomial standard error). Host-side orchestration of
jitted pure functions; arrays: prompts (B, S) int32, generated tokens (B, N) int32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from model.chat import batch_conversations
from sft.batches import mask_rows, sft_batch
from sft.loss import metrics_from_sums
from sft.step import eval_loss


def heldout_batches(tokenizer, conversations: Sequence, image_config, *, batch_size: int, length: int,
                    num_image_slots: int) -> list[dict[str, np.ndarray]]:
    """The held-out set as fixed-shape batches (the last one filled with copies of the first example whose loss
    mask is zeroed, so every batch has ``batch_size`` rows and one compiled program serves them all)."""
    batches = []
    for start in range(0, len(conversations), batch_size):
        chunk = list(conversations[start:start + batch_size])
        real = len(chunk)
        chunk += [conversations[0]] * (batch_size - real)
        batch = sft_batch(tokenizer, chunk, image_config, length=length, num_image_slots=num_image_slots)
        batches.append(mask_rows(batch, np.arange(batch_size) < real))
    return batches


def make_heldout_loss(logits_fn: Callable) -> Callable[[Any, Sequence[Mapping[str, Any]]], dict[str, float]]:
    """``heldout_loss(params, batches) -> {"loss", "accuracy", "tokens"}``: sums over every batch, then the token
    mean (not a mean of batch means)."""
    batch_sums = jax.jit(functools.partial(eval_loss, logits_fn=logits_fn))

    def heldout_loss(params: Any, batches: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        totals = {"nll_sum": 0.0, "tokens": 0.0, "correct": 0.0}
        for batch in batches:
            sums = jax.device_get(batch_sums(params, batch))
            for key in totals:
                totals[key] += float(sums[key])  # host float64: exact enough for any split size
        return {key: float(value) for key, value in metrics_from_sums(
            {k: np.float64(v) for k, v in totals.items()}).items()}

    return heldout_loss


@dataclass(frozen=True)
class GreedyResult:
    """One split's greedy evaluation: ``n`` episodes, ``successes`` (n,) bool and the decoded ``responses``."""

    n: int
    successes: np.ndarray
    responses: tuple[str, ...]

    @property
    def success(self) -> float:
        return float(np.mean(self.successes)) if self.n else 0.0


def greedy_success(params: Any, model_config: Any, tokenizer, image_config, episodes: Sequence[tuple[Any, Any]],
                   verify: Callable[[str, Any, Any], Any], *, generate: Callable, max_new_tokens: int,
                   batch_size: int, num_image_slots: int = 0) -> GreedyResult:
    """Answer each episode's first prompt greedily and judge the answer with ``verify(response, hand, config)``.
    ``episodes``: (episode state with ``.conversation`` and ``.hand``, task config) pairs; ``generate`` has
    ``model.generate``'s signature and returns ``.tokens`` (B, N) and ``.lengths`` (B,). Prompts are left-padded
    in batches of ``batch_size`` (the last one filled with copies, whose answers are dropped)."""
    responses: list[str] = []
    successes: list[bool] = []
    for start in range(0, len(episodes), batch_size):
        chunk = list(episodes[start:start + batch_size])
        real = len(chunk)
        chunk += [episodes[0]] * (batch_size - real)
        prompts = batch_conversations(tokenizer, [state.conversation for state, _ in chunk], image_config,
                                      add_generation_prompt=True, padding_side="left",
                                      num_image_slots=num_image_slots or None)
        vision = {}
        if num_image_slots:
            vision = dict(pixel_values=prompts.pixel_values, aspect_ratio_ids=prompts.aspect_ratio_ids,
                          aspect_ratio_mask=prompts.aspect_ratio_mask,
                          cross_attention_mask=prompts.cross_attention_mask)
        generation = generate(params, model_config, prompts.input_ids, max_new_tokens=max_new_tokens,
                              temperature=0.0, attention_mask=prompts.attention_mask,
                              stop_tokens=tokenizer.stop_ids, **vision)
        tokens, lengths = jax.device_get((generation.tokens, generation.lengths))
        for row in range(real):
            ids = [int(t) for t in tokens[row, :int(lengths[row])] if int(t) not in tokenizer.stop_ids]
            response = tokenizer.decode(ids, skip_special_tokens=True)
            state, config = chunk[row]
            responses.append(response)
            successes.append(bool(verify(response, state.hand, config).success))
    return GreedyResult(n=len(successes), successes=np.asarray(successes, bool), responses=tuple(responses))


# generate's keyword inputs with a leading batch axis (placed like input_ids by generate_on_mesh)
BATCHED_INPUTS = ("attention_mask", "pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")


def generate_on_mesh(generate: Callable, mesh) -> Callable:
    """``generate`` for params placed on ``mesh``, which may span several processes (a multi-host run). Every
    process passes the same full batch; each feeds only the slices its devices hold (``launch.mesh.place_full_batch``:
    rows over data x fsdp where they divide the batch, else replicated), the sampler runs on the whole mesh
    (``mesh=``: its KV cache is sharded the same way), and every process gets the whole Generation back as host
    arrays. On one process this is ``generate`` with the batch placed on the mesh."""
    from launch.mesh import host_arrays, place_full_batch

    def generate_placed(params: Any, config: Any, input_ids: Any, **kwargs: Any) -> Any:
        full = {"input_ids": input_ids, **{k: kwargs[k] for k in BATCHED_INPUTS if kwargs.get(k) is not None}}
        placed = place_full_batch(full, mesh)
        return host_arrays(generate(params, config, placed.pop("input_ids"), **{**kwargs, **placed}, mesh=mesh))

    return generate_placed


def default_generate() -> Callable | None:
    """``model.generate`` when this checkout has the sampler, else None (the greedy hook is then skipped)."""
    try:
        from model import generate
    except ImportError:
        return None
    return generate


# V-IRL's greedy evaluation: one greedy answer per decision point (budget 1); a route succeeds when every decision
# is answered correctly at the first try. Rows are whole routes played by launch.rl_common.evaluate.
VIRL_GREEDY_BUDGET = 1
VIRL_FEEDBACK_LEN = 128


def virl_greedy_evaluator(source, model_config, *, modality: str, seed: int, routes: int,
                          max_new_tokens: int, prompt_multiple: int = 64,
                          mesh: Any = None) -> Callable[[Any], dict[str, dict]]:
    """``evaluate(params) -> {split: eval_record fields}`` for V-IRL: ``routes`` routes per split (in-distribution
    and rule-OOD from the training city, visual OOD for vision; drawn as `memgen eval` draws them with ``seed``)
    played greedily by ``launch.rl_common.evaluate`` (the rollout sampler of `memgen eval`), one answer per
    decision point: route success and per-step accuracy with their standard errors. Every prompt is padded to
    one length, the longest expert conversation of the evaluation routes rounded up to ``prompt_multiple`` (an
    upper bound on every decision's prompt), so one rollout compiles per split size. The params get a zero
    value head for the rollout (its values are not used here). ``mesh``: the mesh the params are placed on (it may
    span processes); the rollout runs there (``launch.rl_common.RolloutRunner``)."""
    import dataclasses

    from jax.sharding import NamedSharding, PartitionSpec

    from launch.rl_common import evaluate
    from launch.rl_config import EpisodeConfig
    from launch.rl_virl import evaluation_routes, evaluation_splits
    from sft.batches import encoded_lengths, padded_length
    from tasks.virl import expert

    episodes = EpisodeConfig(task="virl", modality=modality, max_verify_steps=VIRL_GREEDY_BUDGET,
                             max_new_tokens=max_new_tokens, temperature=0.0, feedback_len=VIRL_FEEDBACK_LEN,
                             prompt_len=1)
    splits = evaluation_splits(episodes, VIRL_GREEDY_BUDGET)
    longest = 1
    for split, split_config in splits.items():
        views: dict[int, Any] = {}
        for city, route in evaluation_routes(episodes, split, seed, routes):
            if modality == "vision" and id(city) not in views:
                from tasks.virl.render import CityViews
                views[id(city)] = CityViews(city, split_config.view_size, split_config.separator_px,
                                            split_config.landmark_radius_m)
            conversations = expert.optimal_conversations(route, split_config, views=views.get(id(city)))
            longest = max(longest, int(np.max(encoded_lengths(source.tokenizer, conversations))))
    episodes = dataclasses.replace(episodes, prompt_len=padded_length([longest], prompt_multiple))
    policy = dataclasses.replace(source, config=model_config)
    value_head = None
    runners: dict = {}

    def evaluate_splits(params: Any) -> dict[str, dict]:
        nonlocal value_head
        if value_head is None:
            from model.value_head import init_value_head
            shapes = jax.eval_shape(lambda: init_value_head(jax.random.key(0), model_config))
            value_head = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
            if mesh is not None:  # replicated on the params' mesh
                value_head = jax.device_put(value_head, NamedSharding(mesh, PartitionSpec()))
        with_head = dict(params, value_head=value_head)
        return {split: evaluate(policy, with_head, episodes, split=split, budget=VIRL_GREEDY_BUDGET,
                                num_episodes=routes, n_samples=1, seed=seed, runners=runners, mesh=mesh)
                for split in splits}

    return evaluate_splits
