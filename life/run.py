"""A run's life around the loop, in one context that train.py and eval.py enter: however the run ends, it
ends in one line and the exit code that says why.

    with RunLife("train.py", log) as life:
        run_dir, cfg = life.open_run_dir(cfg)   # a requeued SLURM job resumes its own run
        life.lock()                              # after the config checks: one process per run dir
        ...                                      # life.phase = "train", "test" as the run goes on
        life.stopped_by(signal)                  # the loop stopped for a signal: exit 128 + N
    if life.exit_code:
        sys.exit(life.exit_code)

On the way out it closes what the run holds (TensorBoard's writer, then the run lock), tells an error a user
can fix in one line (exit 2; the traceback with HYDRA_FULL_ERROR=1), tells a signal in one line that says
what was kept (exit 130 / 143 / 138), removes the directory of a run that was rejected before it started,
and asks SLURM to queue the job again after its warning signal (SIGUSR1). Anything else is a bug and keeps
its traceback. The line and the exit code of each ending are system/errors.py's (`ending`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from pathlib import Path

from system.errors import ending, signal_exit

# What a stop outside the loop kept, by the phase the run was in.
KEPT = {
    "start": "before training started: nothing to save.",
    "train": "while training started or ended: checkpoints/ holds the last checkpoint written.",
    "test": "during the final test: the test was skipped; checkpoints/ holds best.pt and last.pt.",
    "evaluate": "while evaluating: nothing was written.",
    "export": "while exporting: nothing was written.",
}
# What a first stop signal does, by the phase the run is in (the loop's own words are the default).
STOPPING = {"test": "stopping the final test after its batch in flight; best.pt and last.pt are kept"}


class RunLife:
    ended = 0  # runs of this process that have ended: a signal after one says so, not "before it started"

    def __init__(self, prog: str, log: logging.Logger) -> None:
        self.prog, self.log = prog, log
        self.signals = None  # StopSignals, from the loop's start (stop_signals) to the run's end
        self.phase = "start"  # start, train, test, done (eval.py: start, evaluate, done)
        self.run_dir: Path | None = None
        self.fresh = True  # the run directory was made for this run: a rejected run removes it
        self.requeued = False  # SLURM started this job again: it resumes its own run
        self.exit_code = 0
        self._signum: int | None = None
        self._held = contextlib.ExitStack()

    def __enter__(self) -> RunLife:
        return self

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, phase: str) -> None:
        self._phase = phase
        if self.signals is not None and phase in STOPPING:
            self.signals.then = STOPPING[phase]

    def open_run_dir(self, cfg):
        """This run's directory (Hydra made it). A SLURM job started again after a preemption or time
        limit goes on from its last.pt. Returns (run_dir, cfg)."""
        from hydra.core.hydra_config import HydraConfig

        from store.resume_target import find_resume_target
        from store.rundir import requeued_slurm_task
        from system.layout import RunDir

        self.run_dir = Path(HydraConfig.get().runtime.output_dir)
        resuming = cfg.get("resume") and find_resume_target(cfg.resume, cfg.paths.output_root)
        self.requeued = (
            not cfg.get("resume")
            and requeued_slurm_task()
            and RunDir.found(RunDir(self.run_dir).last).exists()
        )
        if self.requeued:  # its original command, whose overrides are the run's own
            cfg.resume, resuming = str(self.run_dir), True
        self.fresh = not resuming
        return self.run_dir, cfg

    def lock(self) -> None:
        """One process trains in a run directory at a time (rank 0 holds it): a second resume is refused."""
        from store.rundir import process_rank
        from system.lock import RunLock

        if process_rank() == 0:
            self.hold(RunLock(self.run_dir))

    def hold(self, context):
        """Enter `context` (the run lock, TensorBoard's writer) until the run ends; returns its value. On the
        way out they close in reverse: the writer's events are whole before another process may resume."""
        return self._held.enter_context(context)

    def stop_signals(self):
        """From here to the run's end a stop signal asks the loop (and then the final test) to stop after
        the step or batch in flight, instead of raising (system/signals.py StopSignals)."""
        from system.signals import StopSignals

        self.signals = StopSignals()
        return self.signals

    def stopped_by(self, signum: int | None) -> None:
        """The loop or the final test stopped for this signal (and said what it kept): exit 128 + N."""
        if signum:
            self._signum, self.exit_code = signum, signal_exit(signum)

    def release(self) -> None:
        """Let go of the run lock, and raise at a signal again (on the way out; a test that trains
        in-process calls it itself)."""
        self._held.close()
        if self.signals is not None:
            self.signals.restore()

    def __exit__(self, kind, err, tb) -> bool:
        # What the run held first (the error passed on: a writer closes quietly after one), the lock last
        # of them: a requeued job or a resume may take it at once.
        self._held.__exit__(kind, err, tb)
        try:
            if err is not None and not self._told(err):
                return False  # a bug, or the user asked for tracebacks: Python's own report
            if err is None and self.signals is not None and self.signals.signum and not self._signum:
                # It came after the test's last batch: nothing was left to stop, the run is whole.
                print(f"{self.prog}: stopped by {self.signals.name} as the run ended: it had finished.",
                      file=sys.stderr)  # fmt: skip
                self.exit_code = signal_exit(self.signals.signum)
            elif self._signum == signal.SIGUSR1:
                self._requeue()
            return True
        finally:
            RunLife.ended += 1
            if self.signals is not None:  # last: until here a signal cannot break into the way out
                self.signals.restore()

    def _told(self, err: BaseException) -> bool:
        """Tell an error that ends the run in one line and set the exit code; False for a bug."""
        end = ending(err, self._out_of_space)
        if end.stopped:
            # Plain, like the start-up stop of life/cli.py: the last line the user sees.
            print(f"{self.prog}: {end.line} {KEPT.get(self.phase, '')}", file=sys.stderr)
            self._signum = end.stopped.signum
        elif end.line is None:
            return False  # a bug, or the user asked for tracebacks: Python's own report
        else:
            self.log.error("%s", end.line)
        self.exit_code = end.code
        if self.phase == "start" and self.fresh:
            from store.rundir import discard_run_dir

            # A rejected or stopped run leaves no directory behind (Hydra's, if a stop came before ours).
            discard_run_dir(self.run_dir or (end.stopped and end.stopped.run_dir))
        return True

    def _out_of_space(self, err: BaseException) -> str | None:
        """A full disk, in one line naming what was kept: nothing to fix in the code, and what was written
        is whole (system/files.py). None for any other error."""
        from system.files import out_of_space, space_left
        from system.layout import RunDir

        if not out_of_space(err):
            return None
        where = self.run_dir or Path.cwd()
        what = f" writing {err.filename}" if getattr(err, "filename", None) else ""
        if self.phase in ("train", "test"):
            last = RunDir.found(RunDir(where).last)
            kept = f"{last} is whole" if last.exists() else "no checkpoint had been written yet"
            kept = f"metrics.json was not written; {kept}" if self.phase == "test" else kept
        else:
            kept = "nothing was written"
        return f"no space left on the device of {where} ({space_left(where)}){what}: {kept}"

    def _requeue(self) -> None:
        """SLURM's warning before a time limit or preemption: last.pt is saved and the lock released; the
        job asks to be queued again, and the same command then continues this run."""
        from store.rundir import process_rank
        from system.slurm import requeue

        if process_rank() == 0:
            requeue(self.log)
