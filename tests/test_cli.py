"""kdsr_jax.cli: one-line `error: ...` messages and exit statuses shared by the scripts."""

import os
import re

import pytest

from kdsr_jax import cli


def test_user_errors_print_first_line_only_and_exit_1(capsys):
    def fails():
        raise ValueError("bad input: x.png\n  details nobody asked for")

    assert cli.run_cli(fails) == 1
    assert capsys.readouterr().err == "error: bad input: x.png\n"


def test_os_error_and_empty_message_are_one_line(capsys):
    def missing(path):
        raise FileNotFoundError(2, "No such file or directory", path)

    assert cli.run_cli(missing, "a.png") == 1
    assert capsys.readouterr().err == "error: [Errno 2] No such file or directory: 'a.png'\n"
    assert cli.run_cli(lambda: (_ for _ in ()).throw(ValueError())) == 1
    assert capsys.readouterr().err == "error: ValueError\n"


def test_ctrl_c_exits_130_with_one_line(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert cli.run_cli(interrupted) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_return_value_is_the_exit_status_and_bugs_keep_their_traceback(capsys):
    assert cli.run_cli(lambda a, b=0: a + b, 2, b=1) == 3
    assert cli.run_cli(lambda: None) == 0
    with pytest.raises(KeyError):
        cli.run_cli(lambda: {}["k"])
    assert capsys.readouterr().err == ""


# ------------------------------------------------------ fileio: one overwrite rule (14, 17)

def test_refuse_existing_names_the_flag(tmp_path):
    from kdsr_jax import fileio

    (tmp_path / "a").write_text("x")
    fileio.refuse_existing([str(tmp_path / "b")], overwrite=False)
    fileio.refuse_existing([str(tmp_path / "a")], overwrite=True)
    with pytest.raises(fileio.OutputExistsError,
                       match=r"a already exists; pass --overwrite to replace it"):
        fileio.refuse_existing([str(tmp_path / "b"), str(tmp_path / "a")], overwrite=False)


@pytest.mark.parametrize("directory", [True, False])
def test_a_failed_replacement_keeps_the_old_output_and_leaves_no_temporary(tmp_path,
                                                                          directory):
    from kdsr_jax import fileio

    target = tmp_path / "out"
    if directory:
        target.mkdir()
        (target / "weights").write_text("old")
    else:
        target.write_text("old")
    with pytest.raises(OSError, match="No space left"):
        with fileio.replacing(str(target), directory=directory) as tmp:
            with open(os.path.join(tmp, "weights") if directory else tmp, "w") as f:
                f.write("half-written")
            raise OSError(28, "No space left on device")
    assert (target / "weights" if directory else target).read_text() == "old"
    assert os.listdir(tmp_path) == ["out"]
    with fileio.replacing(str(target), directory=directory) as tmp:
        with open(os.path.join(tmp, "weights") if directory else tmp, "w") as f:
            f.write("new")
    assert (target / "weights" if directory else target).read_text() == "new"
    assert os.listdir(tmp_path) == ["out"]


def test_check_numbers_rejects_negative_counts_and_non_finite_values():
    import argparse

    rules = {"max_images": (">=", 0), "lambda1": (">", 0), "theta": ("finite", 0)}
    ok = argparse.Namespace(max_images=0, lambda1=0.5, theta=-30.0)
    cli.check_numbers(ok, rules)
    for field, value, msg in [("max_images", -1, "--max-images must be >= 0 (got -1)"),
                              ("lambda1", 0.0, "--lambda1 must be > 0 (got 0)"),
                              ("theta", float("inf"), "--theta must be a finite number")]:
        bad = argparse.Namespace(**{**vars(ok), field: value})
        with pytest.raises(ValueError, match=re.escape(msg)):
            cli.check_numbers(bad, rules)


def test_benchmark_json_follows_the_overwrite_rule(tmp_path, capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_script", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = tmp_path / "bench.json"
    report.write_text("earlier")
    assert bench.main(["--sections", "pipelines", "--json", str(report)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {report} already exists; pass --overwrite to replace it")
    assert report.read_text() == "earlier"
