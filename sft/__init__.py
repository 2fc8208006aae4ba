"""Pure functions for supervised fine-tuning: batches (token ids + loss masks), loss, train step and a
freezing-aware optimizer. No loops over time, no I/O, no global state."""
