"""Graceful stops. SIGINT (Ctrl-C) or SIGTERM (preemption, `kill`, SLURM's time limit) asks the loop to stop
after the optimizer step in flight, so that train.py can save last.pt, close TensorBoard and print the
resume command; it then exits 130 (SIGINT) or 143 (SIGTERM). A second signal exits at once, saving nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from utils.distributed import any_rank, is_distributed

log = logging.getLogger("train")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Installs the handlers on creation (main thread only: elsewhere Python refuses, and the signals stay
    with whoever owns them); `restore()` puts the previous handlers back."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self, synced: bool, device) -> bool:
        """Whether to leave the loop now. Alone: as soon as a signal came. Under DDP every rank must leave
        at the same step, or the others would wait forever in their next collective; so the ranks agree on
        it, only at steps where the loop syncs anyway (every logging.every_n_steps)."""
        if not is_distributed():
            return self.requested
        return synced and any_rank(self.requested, device)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130, 143)."""
        return 128 + (self.signum or 0)

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker inherited this handler: the main process decides
        if self.signum is None:
            self.signum = signum
            log.warning(
                "%s: finishing the current step, then saving checkpoints/last.pt (send it again to exit "
                "at once, without saving).",
                signal.Signals(signum).name,
            )
            return
        log.error("%s again: exiting now, without saving.", signal.Signals(signum).name)
        os._exit(128 + signum)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
