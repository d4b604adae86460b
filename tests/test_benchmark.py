"""Tests for the benchmark (scripts/benchmark.py, benchmarks/): a fast smoke run on
the 'tiny' preset, report/JSON structure, error handling, and the PyTorch twin's
equality with the JAX model and with the official fixtures."""

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax import inference
from kdsr_jax.models import build_model, init_variables
from kdsr_jax.models.spec import preset

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # the top-level benchmarks/ package is not installed
from benchmarks import runner, timing  # noqa: E402
TWIN_TOL = 2e-5  # fixtures README "Model outputs": max abs <= 2e-5


def _cli():
    spec = importlib.util.spec_from_file_location("benchmark_cli", REPO / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY_ARGS = ["--models", "tiny", "--lr-size", "8x12", "--train-model", "tiny",
             "--train-batch", "1", "--train-lr-size", "8", "--iters", "2", "--warmup", "0",
             "--torch", "off", "--train-steps", "model"]


def test_cli_smoke_run_on_tiny_prints_table_and_writes_json(tmp_path, capsys):
    """forward + train sections on the tiny preset: a table with timed rows and a JSON
    report with compile time, medians and throughputs."""
    out_json = tmp_path / "bench.json"
    rc = _cli().main(["--sections", "forward,train", *TINY_ARGS, "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "tiny student" in out and "tiny teacher step (L1+Adam)" in out
    assert "median ms" in out and "img/s" in out and "steps/s" in out
    report = json.loads(out_json.read_text())
    timed = [r for r in report["results"] if not r.get("skipped")]
    fwd = next(r for r in timed if r["section"] == "forward")
    assert fwd["backend"] == "jax" and fwd["shape"] == "8x12->32x48" and fwd["runs"] == 2
    assert fwd["compile_s"] > 0 and fwd["median_s"] > 0
    assert fwd["throughput"] == pytest.approx(1 / fwd["median_s"])
    step = next(r for r in timed if r["section"] == "train")
    assert step["throughput_unit"] == "steps/s" and step["batch"] == 1
    assert report["environment"]["backend"] == "cpu"


def test_forward_section_times_jax_and_the_torch_twin_per_dtype():
    """With torch, each dtype gets a JAX row, a twin row (bfloat16 = autocast) and a
    JAX/PyTorch comparison; the float32 twin matches the JAX output."""
    pytest.importorskip("torch")
    cfg = runner.BenchConfig(sections=("forward",), models=("tiny",), lr_size=(8, 12),
                             dtypes=("float32", "bfloat16"), torch="on", warmup=0, iters=2)
    rows, comparisons = runner.bench_forward(cfg, jax.random.key(0))
    got = {(r["backend"], r["dtype"]) for r in rows}
    assert got == {("jax", "float32"), ("jax", "bfloat16"), ("torch", "float32"),
                   ("torch", "bfloat16")}
    assert all(r["runs"] == 2 and r["median_s"] > 0 for r in rows)
    f32 = next(r for r in rows if r["backend"] == "torch" and r["dtype"] == "float32")
    assert f32["max_abs_diff"] <= TWIN_TOL and "on cpu" in f32["note"]
    bf16 = next(r for r in rows if r["backend"] == "torch" and r["dtype"] == "bfloat16")
    assert TWIN_TOL < bf16["max_abs_diff"] < 0.1            # really ran in bfloat16
    assert [c["what"].split()[-1] for c in comparisons] == ["float32", "bfloat16"]
    for c in comparisons:
        assert c["jax_over_torch"] == pytest.approx(c["jax_median_s"] / c["torch_median_s"])
        assert c["jax_over_torch_min"] == pytest.approx(c["jax_min_s"] / c["torch_min_s"])


def test_forward_section_runs_super_resolve_and_optionally_the_plain_apply():
    """The JAX rows time `inference.super_resolve` (named with its formulation); with
    jax_paths the plain model.apply runs side by side with the same output."""
    cfg = runner.BenchConfig(sections=("forward",), models=("tiny",), lr_size=(8, 12),
                             jax_paths=("super_resolve", "apply"), torch="off", warmup=0,
                             iters=1)
    rows, comparisons = runner.bench_forward(cfg, jax.random.key(0))
    assert [r["jax_path"] for r in rows] == ["super_resolve", "apply"] and not comparisons
    want = "packed" if inference.packing_pays() else "plain"
    assert rows[0]["note"] == f"super_resolve ({want})"
    assert rows[1]["note"].startswith("model.apply (plain); max|apply float32 - jax")
    assert rows[1]["max_abs_diff"] <= 2e-6
    with pytest.raises(ValueError, match="jax paths"):
        runner.BenchConfig(jax_paths=("fast",)).validate()


def test_memory_section_compiles_with_and_without_remat_and_remat_saves_less():
    """Lower + compile only; remat keeps fewer residuals for the backward pass."""
    cfg = runner.BenchConfig(sections=("memory",), memory_model="tiny", memory_batch=2,
                             memory_hr_size=32, torch="off")
    rows = runner.bench_memory(cfg, jax.random.key(0))
    assert [r["remat"] for r in rows] == [False, True]
    plain, remat = rows
    assert 0 < remat["residual_bytes"] < plain["residual_bytes"]
    assert plain["peak_bytes"] > 0 and "saved for backward" in plain["note"]


def test_time_interleaved_alternates_the_calls():
    order = []
    timed = timing.time_interleaved({"a": lambda: order.append("a") or 1,
                                     "b": lambda: order.append("b") or 2}, warmup=1, iters=2)
    assert order == ["a", "b"] * 3
    assert timed["a"][1] == 1 and timed["b"][1] == 2 and len(timed["b"][0].times_s) == 2


def test_cli_reports_bad_arguments_as_one_line_error(capsys):
    assert _cli().main(["--sections", "forward,nope", *TINY_ARGS]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown section(s) ['nope']") and err.count("\n") == 1
    assert _cli().main(["--models", "huge", "--sections", "forward", "--torch", "off"]) == 1
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_classic_pipeline_smoke_reports_images_per_second(capsys):
    """pipelines section, classic only, tiny sizes, no model-step ratio."""
    rc = _cli().main(["--sections", "pipelines", "--pipelines", "classic", "--pipeline-batch", "2",
                      "--classic-hr-size", "32", "--iters", "2",
                      "--warmup", "0", "--torch", "off"])
    out = capsys.readouterr().out
    assert rc == 0
    line = next(ln for ln in out.splitlines() if "classic degrade" in ln)
    assert "32x32->8x8" in line and "img/s" in line


def test_time_jax_separates_compile_from_runs():
    t, out = timing.time_jax(lambda x: x * 2, jnp.ones(3), warmup=1, iters=4)
    assert len(t.times_s) == 4 and t.compile_s > 0 and t.min_s <= t.median_s <= t.max_s
    np.testing.assert_array_equal(out, 2 * np.ones(3))
    with pytest.raises(ValueError, match="iters >= 1"):
        timing.time_jax(lambda x: x, jnp.ones(1), iters=0)


def test_time_jax_step_feeds_donated_state_back():
    """The step runs warmup + iters times on its own output state."""
    t, aux = timing.time_jax_step(lambda s, inc: (s + inc, s), jnp.zeros(()), jnp.ones(()),
                                  warmup=2, iters=3)
    assert len(t.times_s) == 3 and float(aux) == 4.0


# ------------------------------------------------------------------ the PyTorch twin


@pytest.mark.parametrize("kind,scale", [("student", 4), ("teacher", 2)])
def test_torch_twin_equals_jax_model_on_tiny(kind, scale):
    """Twin loaded with the JAX variables gives the JAX output (tiny preset, 2e-5)."""
    pytest.importorskip("torch")
    import torch

    from benchmarks import torch_twin

    spec = preset("tiny", kind=kind, scale=scale)
    variables = init_variables(spec, jax.random.key(3))
    lr = jax.random.uniform(jax.random.key(4), (2, 10, 14, 3))
    hr = jax.random.uniform(jax.random.key(5), (2, 10 * scale, 14 * scale, 3))
    args = (lr,) if kind == "student" else (lr, hr)
    ref = np.asarray(build_model(spec).apply(variables, *args))
    twin = torch_twin.twin_from_variables(spec, variables)
    with torch.no_grad():
        out = torch_twin.nchw_to_nhwc(twin(*[torch_twin.nhwc_to_nchw(a) for a in args]))
    assert out.shape == ref.shape
    assert np.max(np.abs(out - ref)) <= TWIN_TOL


@pytest.mark.parametrize("name,kind,param_key", [
    ("classic_st_small_x4", "student", None), ("classic_ta_small_x2", "teacher", None),
    ("gan_st_small_x4", "student", "params_ema")])
def test_torch_twin_reproduces_official_fixture_output(fixtures_dir, name, kind, param_key):
    """Fixture <name> (.pth weights, .npz eval_sr): the twin, strict-loaded with the
    official state dict, matches the official eval output within 2e-5."""
    torch = pytest.importorskip("torch")
    from benchmarks import torch_twin

    cfg = json.loads(str(np.load(fixtures_dir / f"{name}.npz")["config_json"]))
    z = np.load(fixtures_dir / f"{name}.npz")
    sd = torch.load(fixtures_dir / f"{name}.pth", map_location="cpu", weights_only=True)
    if param_key:
        sd = sd[param_key]
    scale = z["eval_sr"].shape[2] // z["in_lr"].shape[2]
    setting = "gan" if name.startswith("gan") else "classic"
    spec = preset("tiny", kind=kind, scale=scale, setting=setting)
    twin = torch_twin.build_twin(spec)
    twin.load_state_dict(sd, strict=True)
    args = [torch.from_numpy(z["in_lr"])] + ([torch.from_numpy(z["in_hr"])] if kind == "teacher" else [])
    with torch.no_grad():
        out = twin(*args).numpy()
    assert cfg  # the fixture carries its configuration
    assert np.max(np.abs(out - z["eval_sr"])) <= TWIN_TOL
