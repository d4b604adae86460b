"""benchmarks: speed measurements of the KDSR models, train steps and degradation
pipelines, kept out of the installed `kdsr_jax` package (like flax's `examples/`).
`scripts/benchmark.py` is the CLI (a thin wrapper around `runner.run`); measured numbers
and how to read them are in `benchmarks/README.md`.

* `timing`: compile time apart from run time, medians after warm-up, CPU thread limits.
* `runner`: the benchmark sections, the report dict and its text table / JSON.
* `torch_twin`: a PyTorch twin of the SR networks for side-by-side numbers; imports
  torch, so it is only imported when torch is present.

Nothing in `kdsr_jax` imports `benchmarks`.
"""
