"""What `qkdctl sim rate` and `qkdctl sim run` share: one-line usage errors, and a report printed as strict
JSON (non-finite numbers become null) or text, with bad parameters as one error line and exit status 2."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable, NoReturn

EXIT_BAD_PARAMETERS = 2


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Make `--help` show each option's default, unless its help text already names one or it has none
    (None, a flag that is off)."""
    for action in parser._actions:
        default = action.default
        if (not action.option_strings or default is None or default is False or default is argparse.SUPPRESS
                or "default" in (action.help or "")):
            continue
        action.help = (action.help + " " if action.help else "") + "(default %(default)s)"


def one_line_usage_errors(parser: argparse.ArgumentParser, prog: str) -> None:
    """Make `parser` report a usage error as one line `PROG: error: ...` (no usage block), exit status 2."""

    def one_line_error(message: str) -> NoReturn:
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_PARAMETERS)

    parser.error = one_line_error  # type: ignore[method-assign]


def print_report(prog: str, build: Callable[[], dict[str, Any]], as_json: bool,
                 render_text: Callable[[dict[str, Any]], str]) -> int:
    """Build the report and print it; a ValueError (bad parameter) is one error line and status 2."""
    try:
        report = build()
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_PARAMETERS
    print(json.dumps(finite_or_null(report), sort_keys=True) if as_json else render_text(report))
    return 0


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: json.dumps would write them as the non-JSON
    tokens NaN/Infinity (its `default` hook is never asked about floats)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value
