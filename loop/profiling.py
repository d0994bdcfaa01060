"""`debug=profile`: torch.profiler over a few optimizer steps, a trace to open in Perfetto, the top operators.

The profiler skips one step (wait: the first step's one-off costs), warms up for one, then records
`trainer.profile_steps` steps: CPU operators, and CUDA kernels when training on a GPU. When the last of
them is done it writes, into the run directory,

    profile/trace.json      Chrome trace format: open it at https://ui.perfetto.dev or chrome://tracing
    profile/operators.txt   torch's full table of operators, sorted by self CPU time

and logs the top 10 operators by self CPU time (and, on a GPU, the top 10 by self CUDA time). Off, it is
`NoProfiler`, whose step() does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

TOP = 10


class NoProfiler:
    """What the loop holds when profiling is off: every call is a no-op."""

    enabled = False
    done = True
    lines: list[str] = []

    def step(self) -> None:
        pass

    def finish(self) -> list[str]:
        return []


def _self_device_us(event) -> float:
    # torch >= 2.4 names it self_device_time_total; older releases self_cuda_time_total.
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def _ms(us: float) -> str:
    return f"{us / 1000:9.2f} ms"


def top_operators(events, with_cuda: bool, top: int = TOP) -> list[str]:
    """Text lines: the `top` operators by self CPU time, and by self CUDA time when `with_cuda`."""
    ops = [e for e in events if not e.key.startswith("ProfilerStep")]
    width = min(60, max((len(e.key) for e in ops), default=10))
    lines = []

    def table(title: str, key, rows) -> None:
        total = sum(key(e) for e in ops) or 1.0
        lines.append(f"{title} (of {_ms(total).strip()} in all):")
        for e in rows[:top]:
            name = e.key if len(e.key) <= width else e.key[: width - 1] + "…"
            lines.append(f"  {name:<{width}} {_ms(key(e))} {100 * key(e) / total:5.1f}%  {e.count:6d} calls")

    def self_cpu(e):
        return float(e.self_cpu_time_total)

    table(f"profile: top {top} operators by self CPU time", self_cpu, sorted(ops, key=self_cpu, reverse=True))
    if with_cuda:
        on_device = sorted((e for e in ops if _self_device_us(e) > 0), key=_self_device_us, reverse=True)
        table(f"profile: top {top} operators by self CUDA time", _self_device_us, on_device)
    return lines


class StepProfiler:
    """torch.profiler with a wait=1, warmup=1, active=N schedule, advanced by step() once per optimizer
    step. Output goes to `out_dir` (the run directory's profile/), named by rank under DDP."""

    enabled = True

    def __init__(
        self,
        out_dir: str | os.PathLike,
        active_steps: int,
        device: torch.device | str = "cpu",
        log=None,
        rank: int = 0,
        wait: int = 1,
        warmup: int = 1,
    ) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        # Kineto's own log lines otherwise include "gpuGetDeviceCount failed" on every CPU-only machine.
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        self.out_dir, self.log = Path(out_dir), log
        suffix = "" if rank == 0 else f".rank{rank}"
        self.trace_path = self.out_dir / f"trace{suffix}.json"
        self.table_path = self.out_dir / f"operators{suffix}.txt"
        self.with_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.with_cuda else [])
        self.skipped_steps = wait + warmup
        self.total_steps = wait + warmup + active_steps
        self.steps, self.done, self.lines = 0, False, []
        self.profiler = profile(
            activities=activities,
            schedule=schedule(wait=wait, warmup=warmup, active=active_steps, repeat=1),
            on_trace_ready=self._export,
        )
        self.profiler.start()

    def _export(self, prof) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.trace_path))
        events = prof.key_averages()
        self.table_path.write_text(events.table(sort_by="self_cpu_time_total", row_limit=-1) + "\n")
        self.lines = [
            f"profile: trace of {max(0, self.steps - self.skipped_steps)} steps in {self.trace_path} "
            "(open it at https://ui.perfetto.dev); all operators in " + str(self.table_path),
            *top_operators(events, self.with_cuda),
        ]
        if self.log is not None:
            for line in self.lines:
                self.log.info("%s", line)

    def step(self) -> None:
        """Once per optimizer step; stops the profiler (and writes its output) after the last active step."""
        if self.done:
            return
        self.steps += 1
        if self.steps >= self.total_steps:
            self.finish()
        else:
            self.profiler.step()

    def finish(self) -> list[str]:
        """Stop now (at the end of the run, or a stop signal): what was recorded so far is written out.
        Returns the report lines (empty when the run ended before any step was recorded)."""
        if not self.done:
            self.done = True
            self.profiler.stop()  # in the recording phase this calls _export
            if not self.lines and self.log is not None:
                self.log.warning(
                    "profile: the run ended after %d steps, before the profiler recorded any (it needs %d)",
                    self.steps,
                    self.total_steps,
                )
        return self.lines


def build_profiler(steps: int | None, run_dir: str | os.PathLike, device, log=None, rank: int = 0):
    """A StepProfiler writing into run_dir/profile/ when `steps` (trainer.profile_steps) is set; else a
    NoProfiler."""
    if not steps:
        return NoProfiler()
    return StepProfiler(Path(run_dir) / "profile", int(steps), device, log=log, rank=rank)
