"""Pure functions for supervised fine-tuning: batches (token ids + loss masks), loss, train step and a
freezing-aware optimizer. No loops over time, no I/O, no global state.

The public API, re-exported here: ``sft_loss`` / ``sft_loss_sums`` / ``metrics_from_sums`` (sft.loss);
``trainable_mask`` / ``partition`` / ``combine`` / ``OptimizerConfig`` / ``make_optimizer`` / ``learning_rate`` /
``with_peak_learning_rate`` (sft.optim); ``TrainState`` / ``init_train_state`` / ``train_step`` / ``eval_loss``
/ ``stack_for_sweep`` / ``sweep_train_step`` / ``unstack_sweep`` / ``stack_sweep`` (sft.step); ``epoch_permutation`` /
``position_to_example`` / ``batch_example_indices`` (sft.data_order); ``sft_batch`` / ``forward_from_batch`` /
``padded_length`` / ``encoded_lengths`` (sft.batches); ``pack`` / ``pack_rows`` / ``packed_batch`` /
``packed_forward_from_batch`` (sft.packing), ``packed_layout`` (sft.data_order). See docs/sft.md."""

from sft.batches import encoded_lengths, forward_from_batch, padded_length, sft_batch
from sft.data_order import batch_example_indices, epoch_permutation, packed_layout, position_to_example
from sft.loss import metrics_from_sums, sft_loss, sft_loss_sums
from sft.optim import (OptimizerConfig, combine, learning_rate, make_optimizer, partition, trainable_mask,
                       with_peak_learning_rate)
from sft.packing import pack, pack_rows, packed_batch, packed_forward_from_batch
from sft.step import (TrainState, eval_loss, init_train_state, stack_for_sweep, stack_sweep, sweep_train_step,
                      train_step, unstack_sweep)

__all__ = [
    "OptimizerConfig", "TrainState", "batch_example_indices", "combine", "encoded_lengths", "epoch_permutation",
    "eval_loss", "forward_from_batch", "pack", "pack_rows", "packed_batch", "packed_forward_from_batch",
    "packed_layout", "padded_length", "sft_batch",
    "init_train_state", "learning_rate", "make_optimizer", "metrics_from_sums", "partition", "position_to_example",
    "sft_loss", "sft_loss_sums", "stack_for_sweep", "stack_sweep", "sweep_train_step", "train_step", "trainable_mask",
    "unstack_sweep", "with_peak_learning_rate",
]
