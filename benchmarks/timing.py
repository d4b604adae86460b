"""Timing helpers for the benchmark: compile time apart from run time, medians of
several block_until_ready'd runs after warm-up, and CPU thread limiting.

JAX threads on CPU: XLA sizes its CPU thread pool from the CPUs the process may run on
(the scheduler affinity mask) when its CPU client is created, i.e. at the first JAX
computation (importing jax does not create it). `limit_cpu_threads(n)` therefore restricts the process affinity to n CPUs
(`os.sched_setaffinity`) and must run before JAX computes anything; it also calls
`torch.set_num_threads(n)` when torch is present. On a machine with exactly n CPUs it
only sets torch's count (the affinity already allows n).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any, Callable

import jax

DEFAULT_WARMUP = 2
DEFAULT_ITERS = 10


@dataclasses.dataclass
class Timing:
    """Seconds: `compile_s` (trace + lower + XLA compile; None for eager torch) and
    per-run times after warm-up."""

    compile_s: float | None
    times_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def max_s(self) -> float:
        return max(self.times_s)

    def to_dict(self) -> dict[str, Any]:
        return {"compile_s": self.compile_s, "median_s": self.median_s, "min_s": self.min_s,
                "max_s": self.max_s, "runs": len(self.times_s), "times_s": self.times_s}


def _check_counts(warmup: int, iters: int) -> None:
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")


def compile_jax(fn: Callable, *args, static_argnums=()) -> tuple[Callable[[], Any], float]:
    """Jit and compile `fn` for `args`. Returns (a no-argument call that runs it on
    `args` and waits for the result, compile seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, static_argnums=static_argnums).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    dyn_args = [a for i, a in enumerate(args) if i not in static_argnums]
    return (lambda: jax.block_until_ready(compiled(*dyn_args))), compile_s


def time_jax(fn: Callable, *args, warmup: int = DEFAULT_WARMUP, iters: int = DEFAULT_ITERS,
             static_argnums=()) -> tuple[Timing, Any]:
    """Jit `fn`, compile it for `args` (timed apart), then time `iters` calls after
    `warmup` calls, each waited for with block_until_ready. Returns (timing, output)."""
    _check_counts(warmup, iters)
    call, compile_s = compile_jax(fn, *args, static_argnums=static_argnums)
    timed, out = time_eager(call, warmup=warmup, iters=iters)
    return Timing(compile_s, timed.times_s), out


def time_interleaved(calls: dict[str, Callable[[], Any]], warmup: int = DEFAULT_WARMUP,
                     iters: int = DEFAULT_ITERS) -> dict[str, tuple[Timing, Any]]:
    """Time several synchronous no-argument calls side by side: each round runs every
    call once, in turn, so a change in machine load (other jobs, CPU clock) during the
    measurement hits all of them alike instead of whichever ran last. Returns
    {name: (timing with compile_s None, last output)}."""
    _check_counts(warmup, iters)
    outs: dict[str, Any] = {}
    for _ in range(warmup):
        for name, call in calls.items():
            outs[name] = call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iters):
        for name, call in calls.items():
            t = time.perf_counter()
            outs[name] = call()
            times[name].append(time.perf_counter() - t)
    return {name: (Timing(None, times[name]), outs[name]) for name in calls}


def time_jax_step(step: Callable, state, *args, warmup: int = DEFAULT_WARMUP,
                  iters: int = DEFAULT_ITERS) -> tuple[Timing, Any]:
    """Time a training step `step(state, *args) -> (state, aux)`: jitted with the state
    donated and fed back, as a training loop runs it. Returns (timing, last aux)."""
    _check_counts(warmup, iters)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    aux = None
    for _ in range(warmup):
        state, aux = jax.block_until_ready(compiled(state, *args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        state, aux = jax.block_until_ready(compiled(state, *args))
        times.append(time.perf_counter() - t)
    return Timing(compile_s, times), aux


def time_eager(fn: Callable, *args, warmup: int = DEFAULT_WARMUP,
               iters: int = DEFAULT_ITERS) -> tuple[Timing, Any]:
    """Time a synchronous callable (e.g. a torch CPU forward). Returns (timing, output)."""
    _check_counts(warmup, iters)
    out = None
    for _ in range(warmup):
        out = fn(*args)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return Timing(None, times), out


def limit_cpu_threads(n: int | None) -> str:
    """Limit JAX (via CPU affinity, before JAX starts) and torch to `n` CPU threads.
    Returns a one-line description of what was done."""
    if n is None:
        return "threads: not limited"
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    notes = []
    if hasattr(os, "sched_getaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) > n:
            os.sched_setaffinity(0, allowed[:n])
            notes.append(f"CPU affinity {allowed[:n]} (JAX/XLA pool sized from it)")
        else:
            notes.append(f"CPU affinity already {len(allowed)} CPU(s)")
    else:  # pragma: no cover - macOS/Windows
        notes.append("cannot set CPU affinity on this OS; JAX uses all cores")
    try:
        import torch  # optional dependency

        torch.set_num_threads(n)
        notes.append(f"torch.set_num_threads({n})")
    except ImportError:
        pass
    return "threads: " + ", ".join(notes)


def cpu_load() -> float | None:
    """1-minute load average (None where unavailable), to flag a contended machine."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
