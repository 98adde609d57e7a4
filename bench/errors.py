"""One exception family for bad input: every command prints `error: <message>` and exits with code 2.

A message names the problem and the fix in one line. Subclasses say where the problem was found.
"""
import argparse


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


class Parser(argparse.ArgumentParser):
    """argparse whose errors (a missing flag, `--lr abc`) are one `error:` line with exit code 2, like the rest."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def set_threads(threads: int | None) -> None:
    """Torch's intra-op threads for this process (two torch processes on two cores, each with two threads,
    slow each other down ~10×: give each its share)."""
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be positive, got {threads}")
        import torch

        torch.set_num_threads(threads)


def fail(error: BaseException) -> int:
    """Print the one-line error and return the exit code every command uses for bad input."""
    import sys

    print(f"error: {error}", file=sys.stderr)
    return 2
