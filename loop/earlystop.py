"""Early stopping: stop a run whose monitored validation metric has stopped improving.

`update(value, step)` is called once per validation with the task's monitored metric; it returns True when
the metric has not improved by more than `min_delta` over its best for `patience` validations in a row. A
NaN never counts as an improvement. The counters go into the checkpoint (`state_dict`), so a resumed run
stops at the same step as one never interrupted. No torch here: the state is plain numbers.
"""

from __future__ import annotations

import math

from setup.config import ConfigError


class EarlyStopping:
    def __init__(
        self, patience: int | None, min_delta: float = 0.0, mode: str = "min", monitor: str = "val/loss"
    ) -> None:
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise ConfigError(
                f"trainer.early_stopping.patience={patience!r} must be a whole number of validations, "
                "at least 1 (null: off)"
            )
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ConfigError(f"trainer.early_stopping.min_delta={min_delta!r} must be a number >= 0")
        if not math.isfinite(min_delta):
            raise ConfigError(f"trainer.early_stopping.min_delta={min_delta!r} must be finite")
        if mode not in ("min", "max"):
            raise ConfigError(f"early stopping mode={mode!r} must be min or max")
        self.patience, self.min_delta, self.mode, self.monitor = patience, float(min_delta), mode, monitor
        self.best: float | None = None  # the best value seen (improvements by more than min_delta only)
        self.best_step: int | None = None
        self.wait = 0  # validations in a row without an improvement
        self.validations = 0
        self.stopped_step: int | None = None  # the step at which update() first returned True

    @property
    def enabled(self) -> bool:
        return self.patience is not None

    def improves(self, value: float) -> bool:
        """Whether `value` beats the best by more than min_delta (anything that is not NaN beats none)."""
        if value != value:  # NaN
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, step: int | None = None) -> bool:
        """Record one validation; True when the run should stop now. Disabled, it tracks and never stops."""
        value = float(value)
        self.validations += 1
        if self.improves(value):
            self.best, self.best_step, self.wait = value, step, 0
        else:
            self.wait += 1
        stop = self.enabled and self.wait >= self.patience
        if stop and self.stopped_step is None:
            self.stopped_step = step
        return stop

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.wait >= self.patience

    def state_dict(self) -> dict:
        """Plain numbers for the checkpoint (torch.load(weights_only=True) reads them)."""
        return {
            "best": self.best,
            "best_step": self.best_step,
            "wait": self.wait,
            "validations": self.validations,
            "stopped_step": self.stopped_step,
        }

    def load_state_dict(self, state: dict | None) -> None:
        """Take back the counters of a checkpoint; None (a checkpoint from before early stopping) starts
        afresh."""
        if not state:
            return
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.best_step = None if state.get("best_step") is None else int(state["best_step"])
        self.wait = int(state.get("wait", 0))
        self.validations = int(state.get("validations", 0))
        self.stopped_step = None if state.get("stopped_step") is None else int(state["stopped_step"])

    def describe(self) -> str:
        """One line for the log: why the run stopped (or where the counter stands)."""
        delta = f" by more than {self.min_delta:g}" if self.min_delta else ""
        n = self.wait
        best = "no value yet" if self.best is None else f"best {self.best:.4g}"
        if self.best is not None and self.best_step is not None:
            best += f" at step {self.best_step}"
        if not self.enabled:
            return f"early stopping: off ({self.monitor} {best})"
        if self.should_stop:
            return f"early stopping: {self.monitor} did not improve{delta} for {n} validation{'s' * (n != 1)} ({best})"
        return (
            f"early stopping: {self.monitor} has not improved{delta} for {n} of {self.patience} "
            f"validations ({best})"
        )
