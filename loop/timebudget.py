"""A wall-clock budget for a run: `trainer.max_time=HH:MM:SS`, `DD:HH:MM:SS` or minutes.

`parse_max_time` turns the config value into seconds; `Deadline` says, once per optimizer step, whether the
budget is spent. The budget is each process's: train.py gives a resumed or requeued run the whole budget
anew, as a SLURM time limit is per job. `already_used` lets a caller carry time over from an earlier part
(the log line then says how much); train.py passes none.

In a YAML file, quote the value: YAML reads an unquoted `1:30:00` as the base-60 integer 5400, which would
then mean 5400 minutes. On the command line (`trainer.max_time=1:30:00`) Hydra keeps it a string.

No torch here: only time.monotonic(), which is a cheap clock read, no system call on Linux (vDSO).
"""

from __future__ import annotations

import math
import time

from setup.config import parse_max_time  # noqa: F401  (the budget's parser lives with the schema)


def format_seconds(seconds: float) -> str:
    """1:02:03 style (with `N days, ` in front past a day): for log lines."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days} day{'s' * (days != 1)}, {text}" if days else text


class Deadline:
    """Started at construction. `expired()` is one monotonic clock read and a comparison."""

    def __init__(self, seconds: float | None, already_used: float = 0.0) -> None:
        self.seconds = seconds
        self.already_used = max(0.0, float(already_used or 0.0))
        self.start = time.monotonic()
        # The clock reading at which the budget is spent: expired() compares against it, nothing else.
        self._end = math.inf if seconds is None else self.start + seconds - self.already_used

    @property
    def enabled(self) -> bool:
        return self.seconds is not None

    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def used(self) -> float:
        """Seconds of the budget spent, by this part of the run and the ones before it (for the checkpoint)."""
        return self.already_used + (time.monotonic() - self.start)

    def remaining(self) -> float | None:
        """Seconds left (0 once expired), None without a budget."""
        if self.seconds is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def describe(self) -> str:
        """One line for the log, e.g. `time budget 1:30:00: 0:12:00 used before this resume, 1:18:00 left`."""
        if self.seconds is None:
            return "time budget: none"
        used = f", {format_seconds(self.already_used)} used before this resume" if self.already_used else ""
        return f"time budget {format_seconds(self.seconds)}{used}, {format_seconds(self.remaining())} left"
