"""Ctrl-C (SIGINT), SIGTERM and SLURM's SIGUSR1 at every moment of a run, each ending in one line and exit
130 / 143 / 138 (train.py requeues a SLURM job after SIGUSR1).

Before training (start-up) a signal raises `Interrupted` at once: train.py catches it, says "nothing to
save" and exits. From the loop's start to the run's end `StopSignals` takes over: the loop finishes the
optimizer step in flight (or the evaluation batch), saves last.pt, prints the resume command and exits
(closing TensorBoard's writer on the way out: life/run.py); the final test stops after its batch,
keeping best.pt and last.pt. A second signal there exits at once, saving nothing.

A terminal's Ctrl-C and SLURM's scancel reach the whole process group, DataLoader workers included. The
workers ignore the stop signals (`quiet_worker`): the main process decides, and shuts them down as it
exits. They are forked with the signals held (`held_while_forking`), so that none lands in a worker before
it has said so, nor inside a library's at-fork hook in the main process (logging's, which drops it).

No torch at import: train.py installs the first handlers before it imports anything heavy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

from system.errors import Interrupted, signal_exit

log = logging.getLogger("train")

# SIGUSR1: what SLURM sends before a time limit or preemption (`#SBATCH --signal=USR1@120`, submitit).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


# The stop signal that was raised as Interrupted (or SystemExit, while starting). Every one of them ends the
# process, so one still set at a later point was dropped on its way: C code that clears any pending error
# (pybind11's hasattr, a PyErr_Clear after a callback) swallows an exception raised by a handler inside it,
# as it does Python's own KeyboardInterrupt. Seen under load: a Ctrl-C during data set-up, and training went
# on. raise_if_dropped() honours it at the next safe point: the loop's start, the end of the program.
_raised: int | None = None


def _raise(signum: int, frame) -> None:
    global _raised
    _raised = signum
    raise Interrupted(signum)


def dropped() -> int | None:
    """The stop signal whose Interrupted some library swallowed, if any."""
    return _raised


def raise_if_dropped() -> None:
    if _raised is not None:
        raise Interrupted(_raised)


def stop_while_starting(prog: str) -> None:
    """The first thing train.py and eval.py do: until Hydra is set up, a signal exits with one line."""

    def stop(signum: int, frame) -> None:
        # os.write, not print: the signal may have broken into a write to stderr, which refuses another.
        line = f"{prog}: stopped by {signal.Signals(signum).name} while starting: nothing to save.\n"
        os.write(2, line.encode())
        # At once, without unwinding: an exception raised here lands inside whatever import is running,
        # whose library may catch and rewrap it (OmegaConf does) into a traceback. Nothing is open yet.
        os._exit(signal_exit(signum))

    for signum in STOP_SIGNALS:  # SIGUSR1 too: its default action would end the process without a word
        signal.signal(signum, stop)


def raise_on_signals() -> None:
    """From now on SIGINT and SIGTERM raise Interrupted (main thread only; elsewhere Python refuses)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _raise)


def quiet_worker(worker_id: int | None = None) -> None:
    """A DataLoader worker's first act (worker_init_fn): ignore the stop signals that reach the whole process
    group. The main process stops the run; a worker that died of the signal would fail the batch in
    flight, and with it the checkpoint."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def held_while_forking():
    """Hold the stop signals while DataLoader workers are forked: a child inherits the mask, so a signal
    to the group waits in it until quiet_worker has set it to be ignored; one sent to the main process
    meanwhile is delivered as the block ends, to the handler in force."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _logging_busy(logger: logging.Logger) -> bool:
    """Whether this thread is inside a write of one of the handlers that `logger`'s records reach."""
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            # RLock's _is_owned: held by this thread. A handler without a lock is never busy.
            owned = getattr(handler.lock, "_is_owned", None)
            if owned is not None and owned():
                return True
        node = node.parent if node.propagate else None
    return False


class StopSignals:
    """Inside the loop: a signal sets a flag, which the loop reads after each optimizer step. Installs the
    handlers on creation; `restore()` goes back to raising Interrupted."""

    def __init__(self) -> None:
        raise_if_dropped()  # a signal during set-up that a library swallowed: training must not start
        self._signum: int | None = None
        self._unsaid: list[tuple[int, str, tuple]] = []  # lines a signal could not log at once (_say)
        # What a first signal does now, as the run's phase says (life/run.py sets it).
        self.then = "finishing the current step, then saving checkpoints/last.pt"
        # Under torchrun a signal sent to every process of a SLURM job step (scancel, a preemption) comes
        # twice: from the sender, and from torchrun's agent, which forwards each signal it gets to the
        # ranks. The first repeat of the same signal is that copy, not a second request.
        self._agent_copy = "TORCHELASTIC_RUN_ID" in os.environ
        self._pid = os.getpid()
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker inherited this handler: the main process decides
        if self._signum is None:
            self._signum = signum
            self._say(logging.WARNING, "%s: %s (send it again to exit at once, without saving).",
                      signal.Signals(signum).name, self.then)  # fmt: skip
            return
        if self._agent_copy and signum == self._signum:
            self._agent_copy = False
            return
        line = f"{signal.Signals(signum).name} again: exiting now, without saving."
        if not self._say(logging.ERROR, line):
            os.write(2, f"{line}\n".encode())  # unbuffered: the streams may be mid-write
        os._exit(signal_exit(signum))

    def _say(self, level: int, msg: str, *args) -> bool:
        """Log now unless the signal broke into a log write (a handler's lock held by this thread, the one
        handlers run in): writing again there is refused ("reentrant call inside BufferedWriter") and logging
        prints its traceback. Such a line waits for the loop's next look at the flag. Returns whether said."""
        if _logging_busy(log):
            self._unsaid.append((level, msg, args))
            return False
        log.log(level, msg, *args)
        return True

    @property
    def signum(self) -> int | None:
        """The first stop signal, if any. Read by the loop, outside any log write: what a signal could not
        say at once is said here."""
        while self._unsaid:
            level, msg, args = self._unsaid.pop(0)
            log.log(level, msg, *args)
        return self._signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def adopt(self, signum: int) -> None:
        """Another rank's signal, agreed on at a synced step: this rank stops with it, as if it had come here
        (a later copy from torchrun's agent is then the copy, not a second request)."""
        if self.signum is None:
            self._signum = signum
            log.warning("%s on another rank: %s", signal.Signals(signum).name, self.then)

    def restore(self) -> None:
        """Back to raising Interrupted at once (the final test is not worth waiting for)."""
        if self._installed:
            raise_on_signals()
            self._installed = False
