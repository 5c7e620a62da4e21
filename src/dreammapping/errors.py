"""The one-line errors of `dreammapping generate` (and `batch`, `app`) and the exit code each one maps to.

The Python API raises the `GenerateError` subclass; the command line prints `str(e)` and exits with `e.exit_code`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # bad command-line syntax or a bad config value / file
EXIT_EMPTY_PROMPT = 3
EXIT_UNKNOWN_METHOD = 4
EXIT_UNKNOWN_PRESET = 5
EXIT_OUTPUT = 6  # the output folder cannot be written, or the disk filled up while writing
EXIT_RUN_EXISTS = 7  # a fresh run would overwrite an existing one, or --resume has nothing to resume
EXIT_PRIOR = 8  # the prior's weights are missing
EXIT_DIVERGED = 9  # NaN or exploding loss
EXIT_INIT = 10  # the requested initialisation cannot be used (e.g. a bad .ply)
EXIT_BUSY = 11  # another process is writing the run folder (dreammapping.runlock)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM), handled as Ctrl-C is: a checkpoint first
EXIT_CODE_HELP = {EXIT_USAGE: "bad option or value", EXIT_EMPTY_PROMPT: "empty prompt",
                  EXIT_UNKNOWN_METHOD: "unknown method", EXIT_UNKNOWN_PRESET: "unknown preset",
                  EXIT_OUTPUT: "output not writable or disk full",
                  EXIT_RUN_EXISTS: "run exists / nothing to resume", EXIT_PRIOR: "prior missing",
                  EXIT_DIVERGED: "diverged", EXIT_INIT: "bad init", EXIT_BUSY: "run folder in use",
                  EXIT_INTERRUPTED: "interrupted", EXIT_TERMINATED: "terminated (SIGTERM)"}


class GenerateError(Exception):
    """A problem to report in one line (str(e)) with a distinct exit code."""

    exit_code = 1


class ConfigError(GenerateError):
    exit_code = EXIT_USAGE


class EmptyPromptError(GenerateError):
    exit_code = EXIT_EMPTY_PROMPT


class UnknownMethodError(GenerateError):
    exit_code = EXIT_UNKNOWN_METHOD


class UnknownPresetError(GenerateError):
    exit_code = EXIT_UNKNOWN_PRESET


class OutputError(GenerateError):
    exit_code = EXIT_OUTPUT


class RunExistsError(GenerateError):
    exit_code = EXIT_RUN_EXISTS


class PriorError(GenerateError):
    exit_code = EXIT_PRIOR


class DivergedError(GenerateError):
    exit_code = EXIT_DIVERGED


class InitFailedError(GenerateError):
    exit_code = EXIT_INIT


class RunBusyError(GenerateError):
    exit_code = EXIT_BUSY


class Interrupted(GenerateError):
    exit_code = EXIT_INTERRUPTED


class Terminated(GenerateError):
    """A run stopped by SIGTERM, handled as Ctrl-C is (checkpoint, then stop): `dreammapping.signals`."""

    exit_code = EXIT_TERMINATED
