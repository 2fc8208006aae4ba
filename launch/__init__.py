"""The imperative shell: the `memgen` CLI, configs and presets, device meshes, run loops, checkpoints, metric
writers, progress bars, reports, sweeps and benchmarks."""
