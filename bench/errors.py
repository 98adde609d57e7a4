"""One exception family for bad input: every command prints `error: <message>` and exits with code 2.

A message names the problem and the fix in one line. Subclasses say where the problem was found.
"""


class BenchError(ValueError):
    """Bad input or a missing resource; the message names the problem and the fix."""


class UsageError(BenchError):
    """Bad command-line input."""


class DataError(BenchError):
    """Bad data input: a dataset, tokenizer or context that does not fit."""


class CorpusError(BenchError):
    """The embedded corpus could not be obtained; the message says how to provide it."""


class EvalError(BenchError):
    """Bad evaluation input."""


def fail(error: BaseException) -> int:
    """Print the one-line error and return the exit code every command uses for bad input."""
    import sys

    print(f"error: {error}", file=sys.stderr)
    return 2
