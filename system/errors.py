"""How a run ends, decided in one place: an error a user can fix is one line and exit 2, a signal is one line
and exit 128 + its number, anything else is a bug and keeps its traceback (exit 1).

    class DatasetError(UserError): ...     # data/, tasks/, the template: each kind of error a user can fix
    end = ending(err, explain)             # life/cli.py (start-up) and life/run.py (the run)
    sys.exit(end.code)                     # after telling end.line, worded for where the run was

`UserError` is the base of every error whose message is written for the user (ConfigError, DatasetError,
TaskError, CheckpointError, NonFiniteLossError); OmegaConf's own errors (a value of the wrong type) are
told the same way. data/ and tasks/ are plain PyTorch that a forker may copy into another project: their
errors subclass UserError from here all the same, because this module is one file that imports nothing
but the standard library (copy it along, or make their errors subclass Exception there).

Nothing here imports torch, OmegaConf or Hydra at import time: system/signals.py imports it before
train.py has installed its first signal handler, and `train.py --help` must stay instant.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

# The exit codes, the shell's conventions: 2 for a usage error (a bad command line, config, data, task,
# checkpoint), 1 for an uncaught exception, 128 + N for a process ended by signal N (130 Ctrl-C, 143 SIGTERM).
USER = 2
BUG = 1
SIGNALLED = 128

# Read at import, before life/cli.py run() sets the variable for Hydra: whether the user asked for full
# tracebacks (then an error a user can fix shows Python's report too).
FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"


class UserError(Exception):
    """An error the user can fix, whose message says what and where in one line: the run ends with that
    line and exit 2, no traceback (HYDRA_FULL_ERROR=1 shows it)."""


class ConfigError(UserError):
    """A config value that cannot work; the message says which key and why (setup/config.py's schema, and
    every floor that checks a value: the run lock, the parameter groups, the device)."""


class Interrupted(BaseException):
    """A stop signal outside the loop. BaseException, like KeyboardInterrupt: no `except Exception` in
    Hydra or a library swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        # Where Hydra was setting the job up when it came (Hydra forgets it as the error unwinds): a stop
        # before the run started leaves no directory behind.
        self.run_dir = _hydra_run_dir()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _hydra_run_dir() -> str | None:
    """The job's output directory while Hydra runs it; None before (never imports Hydra: a handler)."""
    config = sys.modules.get("hydra.core.hydra_config")
    try:
        return str(config.HydraConfig.get().runtime.output_dir) if config else None
    except Exception:  # no job yet
        return None


def interruption(err: BaseException) -> Interrupted | None:
    """The Interrupted behind an error, if any. A signal that lands inside a library's cleanup (OmegaConf
    restoring its flags in a `finally`) can come out as that library's own error, with the Interrupted as
    its context: the run was still stopped by the signal, and says so."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Interrupted):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def is_user_error(err: BaseException) -> bool:
    """Whether err is one a user can fix: ours, or OmegaConf's (a value that does not fit its key)."""
    from omegaconf.errors import OmegaConfBaseException  # here: importing OmegaConf is not instant

    return isinstance(err, (UserError, OmegaConfBaseException))


def signal_exit(signum: int) -> int:
    """The exit code of a process that a signal stopped."""
    return SIGNALLED + signum


def did_you_mean(key: str, known) -> str:
    """ " (did you mean <the nearest of known>?)" for an error line about a mistyped key, or ""."""
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def one_line(err: BaseException, limit: int = 2000) -> str:
    """An error in one line: its first line, and the config key where OmegaConf names one (its errors span
    several lines: message, full_key, object_type)."""
    key = getattr(err, "full_key", None)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]
    return f"{first} (config key: {key})" if key and key not in first else first


class Ending:
    """How a run ends: the exit code, and the line that tells why (None: a bug, told by its traceback).
    `stopped`: the signal's Interrupted (system/signals.py) if one stopped the run; the caller's line
    adds what was kept. A plain class, not a dataclass: importing dataclasses would delay train.py's
    first signal handler."""

    __slots__ = ("code", "line", "stopped")

    def __init__(self, code: int, line: str | None = None, stopped=None) -> None:
        self.code, self.line, self.stopped = code, line, stopped


def ending(err: BaseException, explain: Callable[[BaseException], str | None] | None = None) -> Ending:
    """The one line and exit code for an error that ends the run. `explain` words the errors that are the
    user's to fix only where they happen (a bad command line while Hydra starts, a full disk during the
    run): it returns None for any other."""
    if stopped := interruption(err):
        return Ending(signal_exit(stopped.signum), f"stopped by {stopped.name}", stopped)
    if FULL_ERROR or not isinstance(err, Exception):  # the user asked for tracebacks; a SystemExit
        return Ending(BUG)
    if is_user_error(err):
        return Ending(USER, one_line(err))
    line = explain(err) if explain else None
    return Ending(USER, line) if line else Ending(BUG)
