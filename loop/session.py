"""What watches one fit of the loop: the progress bar, throughput, the profiler, stop signals and the time
budget, anomaly reports, and the training scalars written at each logging step.

None of it changes what is trained: it reads the loop's state at the steps where the loop syncs anyway
(every logging.every_n_steps), so that a step costs what a hand-written loop's step costs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from pathlib import Path

import torch

from board.writer import add_scalars
from loop.evaluation import measure
from loop.nonfinite import NonFiniteLossError
from loop.profiling import build_profiler
from loop.progress import Progress
from setup.distributed import any_rank, max_over_ranks
from system.errors import one_line
from system.signals import StopSignals

log = logging.getLogger("train")
REPO = Path(__file__).resolve().parents[1]


class Session:
    """Entered around the epochs. `signals` (RunLife.stop_signals: installed from the loop's start to the
    run's end) turn Ctrl-C, SIGTERM and SLURM's SIGUSR1 into a request to stop after the step in flight
    (or the evaluation batch), instead of raising."""

    def __init__(self, parts, state, signals: StopSignals) -> None:
        t, lg = parts.trainer, parts.logging
        self.parts, self.state = parts, state
        self.progress = Progress(lg.progress_bar, parts.plan.total_steps)
        self.meter = Throughput(parts.task.unit)
        self.profiler = build_profiler(t.profile_steps, parts.run_dir, parts.device, log, parts.ddp.rank)
        self.anomaly = AnomalyWarnings(t.detect_anomaly)
        self.signals = signals

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind, err, tb) -> None:
        for line in self.profiler.finish():
            log.info("%s", line)
        self.progress.close()
        self.anomaly.stop()
        if isinstance(err, RuntimeError) and self.anomaly.enabled and "nan" in str(err).lower():
            what = one_line(err).rstrip(".")
            raise NonFiniteLossError(
                f"anomaly detection at step {self.state.step + 1}: {what}{self.anomaly.origin()}"
            ) from None

    def stepped(self) -> bool:
        """After each optimizer step: the profiler, the bar, the log line when due. Returns whether this
        step synced with the device (a logging step), where the DDP ranks may agree on stopping."""
        self.profiler.step()
        self.progress.advance()
        step, every = self.state.step, self.parts.logging.every_n_steps
        synced = step % every == 0 or step == self.parts.plan.total_steps
        if synced:
            self.report()
        return synced

    def stop_reason(self, synced: bool) -> str | None:
        """A signal or the time budget ends the loop after this step. Under DDP every rank must leave at
        the same step, so the ranks agree on it, at the steps where the loop syncs anyway."""
        alone = self.parts.ddp.world_size == 1  # alone, a stop needs no agreement: asked every step
        if alone and self.signals.requested:
            return "signal"
        if not alone and synced:
            # Which signal, not whether: a rank signalled alone (`kill PID`, an eviction) stops every
            # rank, and each then says so and exits 128 + N as it does.
            signum = max_over_ranks(self.signals.signum or 0, self.parts.device)
            if signum:
                self.signals.adopt(signum)
                return "signal"
        deadline = self.parts.deadline
        due = deadline.enabled and (synced or alone)
        return "max_time" if due and any_rank(deadline.expired(), self.parts.device) else None

    def stop_now(self) -> bool:
        """During an evaluation, after each batch: a signal stops it (alone; under DDP the ranks could
        not agree without a collective per batch, so they finish the evaluation first)."""
        return self.signals.requested and self.parts.ddp.world_size == 1

    def tell_stop(self, resume: str) -> str | None:
        """One line on why the loop ended before the run's length, and how to go on; returns the reason."""
        parts, state = self.parts, self.state
        if state.stop_reason == "signal":
            how = "; requeueing" if self.signals.name == "SIGUSR1" else ""
            log.warning(
                "Stopped by %s at step %d%s. Resume with: %s", self.signals.name, state.step, how, resume
            )
        elif state.stop_reason == "max_time":
            log.warning(
                "trainer.max_time=%s reached at step %d (%s); last.pt saved, testing. Continue with: %s",
                parts.trainer.max_time, state.step, parts.deadline.describe(), resume,
            )  # fmt: skip
        elif state.stop_reason == "early_stopping":
            log.info("Stopped early at step %d: %s", state.step, state.early_stopping.describe())
        return state.stop_reason

    def report(self) -> None:
        """The loop's one sync point: reading the losses makes the device catch up. Under DDP they are
        averaged over ranks, and a non-finite one stops every rank alike."""
        parts, state = self.parts, self.state
        values = {**state.window.read(state.last_good, parts.writer), "lr": parts.scheduler.get_last_lr()[0]}
        values[self.meter.key] = self.meter.close_window()
        values.update(train_metrics(parts, state))
        if parts.writer:
            add_scalars(parts.writer, values, state.step, "train")
        if parts.logging.lr_per_group:
            from board.dashboards import log_lr_per_group

            log_lr_per_group(parts.writer, parts.optimizer, state.step)
        self.progress.report(state.step, state.epoch, values)
        state.window.reset()


def train_metrics(parts, state) -> dict:
    """The task's metrics (train/acc, ...) on the last training batch of the logging window: read at the
    loop's sync point, so they cost no extra sync per step. The loss is the window's mean, above."""
    sample, state.train_sample = state.train_sample, None
    if sample is None:
        return {}
    output, batch = sample
    task = parts.task
    metrics = task.init_metrics(parts.device)
    with torch.no_grad():  # the output as the step made it: its metrics build no graph
        task.update(metrics, output, batch)
    return {k: v for k, v in measure(task, metrics).items() if k != "loss"}


class Throughput:
    """Samples (or tokens) per second over each logging window, validation and checkpoints left out."""

    def __init__(self, unit: str) -> None:
        self.key = f"{unit}_per_s"
        self.seen, self.start = 0, time.perf_counter()
        self.windows: list[tuple[int, float]] = []

    def count(self, n: int) -> None:
        self.seen += n

    def close_window(self) -> float:
        elapsed = time.perf_counter() - self.start
        self.windows.append((self.seen, elapsed))
        rate = self.seen / max(elapsed, 1e-9)
        self.seen, self.start = 0, time.perf_counter()
        return rate

    @contextlib.contextmanager
    def paused(self):
        began = time.perf_counter()
        yield
        self.start += time.perf_counter() - began

    def summary(self) -> dict:
        """Every window but the first, which holds the one-off costs (allocator warm-up, cudnn autotuning,
        torch.compile, starting workers); `make bench` reads it."""
        steady = self.windows[1:] or self.windows
        return {
            "train_seconds": sum(s for _, s in self.windows),
            self.key: sum(n for n, _ in steady) / max(sum(s for _, s in steady), 1e-9),
        }


class AnomalyWarnings(list):
    """debug=anomaly: torch reports where the NaN's forward call was as a warning; it is held back and
    goes into the error line (other warnings are passed on at the end)."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled
        self._context = warnings.catch_warnings(record=True) if enabled else None
        if self._context is not None:
            self._caught = self._context.__enter__()
            warnings.simplefilter("always")

    def stop(self) -> None:
        if self._context is not None:
            self.extend(self._caught)
            self._context.__exit__(None, None, None)
            self._context = None
            for w in self:
                if "Error detected in" not in str(w.message):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def origin(self) -> str:
        """`; the forward call that made it: tasks/x.py:23`: the project's innermost frame."""
        self.stop()
        for w in self:
            text = str(w.message)
            if "Error detected in" in text:
                frames = re.findall(r'File "([^"]+)", line (\d+)', text)
                root = str(REPO) + "/"
                own = [
                    (f.replace(root, ""), n)
                    for f, n in frames
                    if f.startswith(root) and "-packages/" not in f
                ]
                if own:
                    return f"; the forward call that made it: {own[-1][0]}:{own[-1][1]}"
        return ""
