"""What every fuzz target shares: coverage instrumentation of qkdd, the atheris entry point, and the checks
that an accepted error says nothing secret.

A target module is `tests/fuzz/fuzz_<name>.py` with `TestOneInput(data: bytes)` (feeds one input to the
parser; returns normally on acceptance or on one of the parser's documented errors, raises on anything
else) and `seeds() -> list[bytes]` (small valid inputs from the real encoders; `make_corpus` writes them).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import atheris


def instrumented(*packages: str):
    """Context manager: modules of qkdd (and `packages`) imported inside it report coverage to libFuzzer."""
    return atheris.instrument_imports(include=["qkdd", *packages])


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Run libFuzzer on `test_one_input` with the command line's arguments (corpus dirs, -runs=N, ...)."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


class Finding(AssertionError):
    """Something a parser must never do: the fuzzer reports it as a crash with its input."""


def check_silent(text: str, secrets: Iterable[bytes | str], what: str) -> None:
    """Raise Finding if `text` (an error message or response body) quotes any of `secrets` (raw, hex)."""
    for secret in secrets:
        forms = [secret] if isinstance(secret, str) else [secret.hex(), secret.decode("latin-1")]
        for form in forms:
            if len(form) >= 8 and form in text:
                raise Finding(f"{what} quotes secret material: {text[:200]!r}")
