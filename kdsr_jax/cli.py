"""Shared error handling of the command-line scripts (scripts/convert.py, evaluate.py,
upscale.py): user-facing errors become one `error: ...` line on stderr and a non-zero
exit status, never a traceback (team contract, "User-facing errors").

    def main(argv=None) -> int:
        args = parse_args(argv)
        return cli.run_cli(run, args)

Standard library only, so importing it does not slow down `--help` or argument errors.
"""

from __future__ import annotations

import sys
from typing import Callable

# Exit status of a failed command, and of one stopped by Ctrl-C (128 + SIGINT, as shells
# report it).
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def error_line(exc: BaseException) -> str:
    """The first non-blank line of the exception's message (whitespace collapsed), or
    the exception's type name if the message is empty."""
    for line in str(exc).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(exc).__name__


def print_error(exc: BaseException) -> None:
    """Prints `error: <first line of exc>` to stderr."""
    print(f"error: {error_line(exc)}", file=sys.stderr)


def run_cli(fn: Callable[..., int | None], *args, **kwargs) -> int:
    """Calls `fn(*args, **kwargs)` and returns its exit status (None -> 0).
    ValueError / OSError (which include our ImageError, CheckpointError, ...) -> one
    `error: ...` line and EXIT_ERROR; Ctrl-C -> `error: interrupted` and
    EXIT_INTERRUPTED. Anything else is a bug and keeps its traceback."""
    try:
        status = fn(*args, **kwargs)
    except (ValueError, OSError) as exc:
        print_error(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else int(status)


def check_numbers(args, rules: dict[str, tuple[str, float]]) -> None:
    """Validates numeric flags after parsing: `rules` maps an argparse dest to
    (op, bound) with op in '>=', '>', 'finite' (no bound); None values (unset optional
    flags) pass. Every number must be finite. Raises ValueError naming the first bad flag, e.g.
    `--max-images must be >= 0 (got -1)`."""
    import math

    for dest, (op, bound) in rules.items():
        value = getattr(args, dest)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number (got {value})")
        if (op == ">=" and value < bound) or (op == ">" and value <= bound):
            raise ValueError(f"{flag} must be {op} {bound:g} (got {value:g})")
