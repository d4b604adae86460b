"""kdsr_jax.cli: one-line `error: ...` messages and exit statuses shared by the scripts."""

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
