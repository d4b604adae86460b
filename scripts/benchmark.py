#!/usr/bin/env python
"""Benchmark KDSR in JAX: student forward (vs a PyTorch twin), train steps, and the
degradation pipelines. Prints a table; `--json PATH` also writes the full report.

Examples (each finishes in a few minutes on a 2-core laptop):
    # KDSRs-M student at LR 64x64, batch 1, 2 threads, JAX (super_resolve) vs PyTorch:
    python scripts/benchmark.py --sections forward --models KDSRs-M --threads 2
    # ... and the plain model.apply side by side (what super_resolve gains):
    python scripts/benchmark.py --sections forward --models KDSRs-M --jax-paths super_resolve,apply
    # the teacher train step at batch 4 / 48x48, with and without remat:
    python scripts/benchmark.py --sections train --train-remat both
    # compiled memory of the official classic teacher step (batch 64, HR 256), with and
    # without remat (lower + compile only):
    python scripts/benchmark.py --sections memory
    # bfloat16 compute as well, on an accelerator:
    python scripts/benchmark.py --sections forward --dtypes float32,bfloat16
    # the degradation pipelines as a share of the official-size steps they feed
    # (opt-in: an accelerator, or a CPU with ~20 GB and over 15 minutes):
    python scripts/benchmark.py --sections pipelines --step-ratio

Threads: `--threads N` restricts this process's CPU affinity to N CPUs before JAX
starts (XLA sizes its CPU thread pool from the affinity mask) and calls
`torch.set_num_threads(N)`. Without it both use all CPUs they are allowed. On a
machine shared with other jobs (load average above the CPU count, printed at the end),
torch's multi-threaded CPU kernels degrade much more than XLA's (their worker threads
wait for each other at every op), so compare at `--threads 1` there as well.
See `benchmarks/runner.py` for what each section measures (`data`, the input pipeline:
`benchmarks/data.py`, e.g. `--sections data --threads 2`) and `benchmarks/README.md`
for measured numbers.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

# The benchmark code lives in the top-level `benchmarks/` package of the repository,
# not in the installed kdsr_jax package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import timing  # noqa: E402  (imports jax, starts no backend)
from kdsr_jax import fileio  # noqa: E402

SECTIONS = ("forward", "train", "pipelines", "memory", "data")
DEFAULT_SECTIONS = ("forward", "train", "pipelines")


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _size(s: str) -> tuple[int, int]:
    try:
        parts = [int(x) for x in s.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {s!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with positive values, got {s!r}")
    return tuple(parts)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--sections", type=_csv, default=DEFAULT_SECTIONS,
                   help="comma list of forward,train,pipelines,memory,data (default: "
                        "forward,train,pipelines)")
    p.add_argument("--models", type=_csv, default=("KDSRs-M", "KDSRs-L", "KDSR-GAN"),
                   help="student presets for the forward section (default: "
                        "KDSRs-M,KDSRs-L,KDSR-GAN; 'tiny' for a quick check)")
    p.add_argument("--lr-size", type=_size, default=(64, 64),
                   help="forward LR input size, N or HxW (default 64)")
    p.add_argument("--batch", type=int, default=1, help="forward batch (default 1)")
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4), help="SR scale (default 4)")
    p.add_argument("--dtypes", type=_csv, default=("float32",),
                   help="forward compute dtypes: float32[,bfloat16] (default float32)")
    p.add_argument("--jax-paths", type=_csv, default=("super_resolve",),
                   help="JAX formulations to time: super_resolve (kdsr_jax.inference, the "
                        "fastest for the backend) and/or apply (the plain model.apply) "
                        "(default super_resolve)")
    p.add_argument("--dynconv", default="auto", choices=("auto", "shift", "grouped"),
                   help="dynamic-conv formulation of the JAX model (default auto)")
    p.add_argument("--torch", default="auto", choices=("auto", "on", "off"),
                   help="PyTorch twin side by side: auto = when torch imports (default)")
    p.add_argument("--threads", type=int, default=None,
                   help="limit JAX (CPU affinity) and torch to N CPU threads")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs after compile (default 2)")
    p.add_argument("--iters", type=int, default=10,
                   help="timed runs; the median is reported (default 10)")
    p.add_argument("--train-model", default="KDSRs-M", help="train-section preset (default KDSRs-M)")
    p.add_argument("--train-batch", type=int, default=4, help="train-step batch (default 4)")
    p.add_argument("--train-lr-size", type=int, default=48,
                   help="train-step LR patch side (default 48)")
    p.add_argument("--train-steps", type=_csv, default=("model", "project"),
                   help="train steps to time: 'model' (self-contained L1+Adam step on ready "
                        "LR/HR) and/or 'project' (kdsr_jax.train classic teacher step, LR "
                        "synthesis included) (default: both)")
    p.add_argument("--train-remat", default="off", choices=("off", "on", "both"),
                   help="time the 'model' train step with activation rematerialisation "
                        "(build_model(remat=True)): off, on or both (default off)")
    p.add_argument("--memory-model", default="KDSRs-M",
                   help="memory-section teacher preset (default KDSRs-M)")
    p.add_argument("--memory-batch", type=int, default=64,
                   help="memory-section batch (default 64, the official classic batch)")
    p.add_argument("--memory-hr-size", type=int, default=256,
                   help="memory-section HR patch side (default 256, official)")
    p.add_argument("--pipelines", type=_csv, default=("classic", "realesrgan"),
                   help="degradation pipelines to time: classic,realesrgan (default: both)")
    p.add_argument("--pipeline-batch", type=int, default=16, help="pipeline batch (default 16)")
    p.add_argument("--classic-hr-size", type=int, default=256,
                   help="classic pipeline HR side (default 256)")
    p.add_argument("--realesrgan-gt-size", type=int, default=400,
                   help="Real-ESRGAN pipeline GT side (default 400)")
    p.add_argument("--pipeline-teacher", default="KDSRs-M",
                   help="teacher preset whose step the classic pipeline is compared to")
    p.add_argument("--pipeline-student", default="KDSR-GAN",
                   help="student preset whose step the Real-ESRGAN pipeline is compared to")
    p.add_argument("--step-ratio", action="store_true",
                   help="also time the official-size model steps the pipelines feed (KDSRs-M "
                        "teacher, KDSR-GAN student with KD, at --pipeline-batch); on a CPU "
                        "this needs about 20 GB of memory and over 15 minutes")
    p.add_argument("--data-images", type=int, default=16,
                   help="data section: DIV2K-sized PNGs to generate (default 16)")
    p.add_argument("--data-prepared-images", type=int, default=0,
                   help="data section: also time a prepared set of this many images "
                        "(copies of the generated ones, distinct files: 3450 gives a "
                        "DF2K-sized set of ~29 GB on disk; default: off)")
    p.add_argument("--data-sources", type=_csv,
                   default=("folder_uncached", "folder_cached", "tfds_layout", "prepared"),
                   help="data section: sources to time (default folder_uncached,"
                        "folder_cached,tfds_layout,prepared)")
    p.add_argument("--data-dir", default="",
                   help="data section: keep the generated data here for re-runs "
                        "(default: a temporary folder)")
    p.add_argument("--data-workers", type=_csv, default=("1t", "2t", "2p"),
                   help="data section: input workers, N threads 'Nt' / processes 'Np' "
                        "(default 1t,2t,2p)")
    p.add_argument("--data-batches", type=int, default=4,
                   help="data section: timed batches per row (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", default=None, help="also write the full report as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.json:   # the one output rule of every CLI (kdsr_jax.fileio)
            fileio.refuse_existing([args.json], args.overwrite)
        # Before JAX starts its CPU backend (see benchmarks/timing.py).
        threads_note = timing.limit_cpu_threads(args.threads)
        # Imported after the thread limit: importing the models may compute constants.
        from benchmarks import runner

        report = {}
        if "data" in args.sections:  # self-contained section (benchmarks/data.py)
            from benchmarks import data as data_bench

            report["data"] = data_bench.run(data_bench.DataBenchConfig(
                num_images=args.data_images, prepared_images=args.data_prepared_images,
                workdir=args.data_dir, workers=args.data_workers, sources=args.data_sources,
                batches=args.data_batches,
                seed=args.seed), log=lambda m: print(m, file=sys.stderr, flush=True))
            print(data_bench.format_table(report["data"]))
            args.sections = tuple(s for s in args.sections if s != "data")
        cfg = runner.BenchConfig(
            sections=args.sections, models=args.models, lr_size=args.lr_size,
            batch=args.batch, scale=args.scale, dtypes=args.dtypes, jax_paths=args.jax_paths,
            dynconv=args.dynconv,
            torch=args.torch, warmup=args.warmup, iters=args.iters,
            train_model=args.train_model, train_batch=args.train_batch,
            train_lr_size=args.train_lr_size, train_steps=args.train_steps,
            train_remat=args.train_remat, memory_model=args.memory_model,
            memory_batch=args.memory_batch, memory_hr_size=args.memory_hr_size,
            pipelines=args.pipelines, pipeline_batch=args.pipeline_batch,
            classic_hr_size=args.classic_hr_size, realesrgan_gt_size=args.realesrgan_gt_size,
            pipeline_teacher=args.pipeline_teacher, pipeline_student=args.pipeline_student,
            step_ratio=args.step_ratio, seed=args.seed, threads_note=threads_note)
        if args.sections:
            report.update(runner.run(cfg, log=lambda m: print(m, file=sys.stderr, flush=True)))
            print(runner.format_table(report))
        if args.json:
            runner.write_json(report, args.json)
            print(f"wrote {args.json}")
    except (ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
