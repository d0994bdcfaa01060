"""Train the heavy shipped experiments for real and check them against the quality targets of issue 11;
write the numbers to docs/quality.md.

    python tools/quality.py                        # every case below, one after another
    python tools/quality.py --only shapes_unet     # one case
    python tools/quality.py --output /tmp/q.md     # elsewhere than docs/quality.md

Each case is the command a user types, `python train.py experiment=<name>`, in a subprocess with its run
directory under outputs/quality/. Wall time is measured around that process, so it includes Python start-up,
building the data and every validation, not only the training steps. On a shared machine the wall times
move with the load of other processes: the table gives the machine's CPU count and load average.
(The quick regression check is a test: tests/test_regression.py.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    experiment: str
    metric: str  # a key of metrics.json
    target: str  # ">= 0.80" or "< 2.5"
    seconds: float  # the time the run must finish within
    # The case whose run this one starts from (init_from=<its run directory>): run first, also under --only.
    after: str | None = None
    args: tuple[str, ...] = ()  # more of the command line (init_from_map)

    def passes(self, value: float, wall: float) -> bool:
        op, threshold = self.target.split()
        ok = value >= float(threshold) if op == ">=" else value < float(threshold)
        return ok and wall <= self.seconds


# Each experiment with a quality target (issue 11; detection: issue 19).
TARGETS = (
    Case("shapes_unet", "test/miou", ">= 0.80", 180),
    Case("pytext_gpt", "val/bpc_best", "< 2.5", 300),
    Case("detection", "val/map50_best", ">= 0.5", 600),
    Case("tagging", "test/f1", ">= 0.95", 180),
    # Issue 28's worked example: contrastive pretraining, then a linear probe of its encoder.
    Case("contrastive_digits", "test/knn_acc", ">= 0.90", 420),
    Case(
        "finetune_contrastive",
        "test/acc",
        ">= 0.88",
        150,
        after="contrastive_digits",
        args=("init_from_map={encoder.:features.}",),
    ),  # fmt: skip
)
# The cases whose experiment is on disk: a project generated without one (copier.yml) has no case for it.
# (and the case it starts from, if any, is on disk too)
CASES = [case for case in TARGETS if (REPO / "conf" / "experiment" / f"{case.experiment}.yaml").is_file()]
CASES = [case for case in CASES if case.after is None or case.after in {c.experiment for c in CASES}]


def run_case(case: Case, out_root: Path, done_before: dict[str, dict]) -> dict:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = out_root / f"{stamp}_{case.experiment}"
    command = [sys.executable, "train.py", f"experiment={case.experiment}", f"hydra.run.dir={run_dir}"]
    if case.after:
        command.append(f"init_from={done_before[case.after]['run_dir']}")
    command += case.args
    print(f"$ {' '.join(command[1:])}", flush=True)
    load_before = os.getloadavg()[0]
    cpu_before = _children_cpu_seconds()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    result = {"case": case, "wall": wall, "value": math.nan, "ok": False, "run_dir": run_dir, "metrics": {}}
    # CPU seconds the run used (user + system, all its threads): on a machine that others load, wall time
    # grows while this stays near what the run needs; cpu / cores is about its wall time on idle cores.
    result["cpu"] = _children_cpu_seconds() - cpu_before
    result["load"] = (load_before, os.getloadavg()[0])  # 1-minute load averages: how much else was running
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
        return result
    result["metrics"] = json.loads((run_dir / "metrics.json").read_text())
    result["value"] = float(result["metrics"][case.metric])
    result["ok"] = case.passes(result["value"], wall)
    return result


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def markdown(results: list[dict]) -> str:
    import torch

    machine = platform.processor() or platform.machine()
    lines = [
        "# Quality of the shipped experiments",
        "",
        "Written by `python tools/quality.py`: each experiment trained for real with",
        "`python train.py experiment=<name>`, its wall time measured around the whole process (start-up,",
        "data, every validation and the test). Targets from issues 11, 19 and 28. The machine may be shared: the load",
        "column gives the 1-minute load average before and after each run, and `cpu s / cores` the CPU",
        "time the run used (all threads) over the CPU count. Under load that overstates the run's own need",
        "(threads that wait for a descheduled peer spin): trust wall times only when the load stays near",
        "the CPU count.",
        "",
        f"Machine: {machine}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; {datetime.datetime.now():%Y-%m-%d %H:%M}.",
        "",
        "| experiment | metric | value | target | wall s | limit s | cpu s / cores | train s | steps | load "
        "| pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, m = r["case"], r["metrics"]
        cells = [
            f"`{c.experiment}`",
            c.metric,
            f"{r['value']:.4f}",
            c.target,
            f"{r['wall']:.0f}",
            f"{c.seconds:.0f}",
            f"{r['cpu'] / (os.cpu_count() or 1):.0f}",
            f"{m['train_seconds']:.0f}" if "train_seconds" in m else "?",
            str(m.get("steps", "?")),
            " / ".join(f"{x:.1f}" for x in r["load"]),
            "yes" if r["ok"] else "**no**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "All numbers of each run (its metrics.json):", ""]
    for r in results:
        shown = {k: v for k, v in r["metrics"].items() if isinstance(v, (int, float))}
        lines.append(f"- `{r['case'].experiment}`: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", action="append", choices=[c.experiment for c in CASES], help="run this case"
    )
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "quality.md")
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "quality", help="where run dirs go")
    args = parser.parse_args()
    if not CASES:
        names = ", ".join(case.experiment for case in TARGETS)
        print(f"quality.py: none of {names} is in conf/experiment/: nothing to do")
        return 0
    wanted = set(args.only or [c.experiment for c in CASES])
    for case in reversed(CASES):  # a chosen case's `after` first: its run directory is this one's init_from
        if case.experiment in wanted and case.after:
            wanted.add(case.after)
    done: dict[str, dict] = {}
    for case in (c for c in CASES if c.experiment in wanted):
        done[case.experiment] = run_case(case, args.runs, done)
    results = list(done.values())
    for r in results:
        c = r["case"]
        print(
            f"{c.experiment:14s} {c.metric} {r['value']:.4f} (target {c.target}) in {r['wall']:.0f} s, "
            f"{r['cpu']:.0f} CPU s "
            f"(limit {c.seconds:.0f} s): {'pass' if r['ok'] else 'FAIL'}"
        )
    args.output.write_text(markdown(results))
    print(f"Wrote {args.output}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
