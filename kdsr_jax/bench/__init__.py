"""kdsr_jax.bench: speed measurements of the KDSR models, train steps and degradation
pipelines (the `scripts/benchmark.py` CLI is a thin wrapper around `runner.run`).

* `timing`: compile time apart from run time, medians after warm-up, CPU thread limits.
* `runner`: the benchmark sections, the report dict and its text table / JSON.
* `torch_twin`: a PyTorch twin of the SR networks (reference/ARCHITECTURE.md §1-§4)
  for side-by-side numbers; imports torch, so it is only imported when torch is present.

Nothing in the runtime package imports `kdsr_jax.bench`.
"""
