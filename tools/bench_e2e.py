"""End-to-end, as a user pays it: whole `python train.py` processes against tools/handwritten_train.py
doing the same work (same data, model, optimizer, schedule and epochs, validation every epoch, the best
checkpoint, the final test; no TensorBoard, no Hydra).

- Wall time: plain processes, launch to exit, in pairs in random order; the median of the per-pair ratios
  (template / hand-written) with its 95% bootstrap interval. Goal for the default run: at most 1.15.
- Where the template's extra time goes: separate runs of train.py with timers wrapped around its parts
  (`--child` below: start-up to the first step, the steps, validation, the task's pictures, checkpoints,
  TensorBoard event writes, the final test; each part's own time, without the parts it calls), next to the
  hand-written script's own timers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from default_run import label as default_run_label  # noqa: E402

PYTHON = sys.executable
LM = ["task=language_modeling", "data=pytext", "model=gpt"]

RUNS = {
    "default": (f"`python train.py` ({default_run_label(epochs=True)})", []),
    "regression": (
        "`python train.py experiment=diabetes_regression` (50 epochs)",
        ["experiment=diabetes_regression"],
    ),
    "segmentation": (
        "`python train.py experiment=shapes_unet trainer.max_epochs=2`",
        ["experiment=shapes_unet", "trainer.max_epochs=2"],
    ),
    "language_modeling": (
        "`python train.py task=language_modeling data=pytext model=gpt trainer.max_steps=60 "
        "data.dataset.max_bytes=1000000`",
        [*LM, "trainer.max_steps=60", "data.dataset.max_bytes=1000000"],
    ),
}
QUICK = {"default": ("`python train.py trainer.max_epochs=2`", ["trainer.max_epochs=2"])}


def spec_of(cfg) -> dict:
    """What the hand-written script needs from the composed config, as plain values."""
    from omegaconf import OmegaConf

    def node(n, drop=()):
        return {k: v for k, v in OmegaConf.to_container(n, resolve=True).items() if k not in drop}

    return {
        "kind": cfg.task._target_.split(".")[1],
        "dataset": node(cfg.data.dataset),
        "batch_size": cfg.data.batch_size,
        "model": node(cfg.model, ("input", "output")),
        "optimizer": node(cfg.optimizer, ("fused",)),
        "scheduler": node(cfg.scheduler),
        "max_epochs": cfg.trainer.max_epochs,
        "max_steps": cfg.trainer.max_steps,
        "seed": cfg.trainer.seed,
        "num_classes": cfg.data.get("num_classes", 0) or 0,
        "log_every": cfg.logging.every_n_steps,
    }


def run_process(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return seconds, proc.stdout


def breakdown_template(overrides: list[str], run_dir: Path) -> dict:
    launch = time.time()
    out = run_dir.with_suffix(".times.json")
    cmd = [PYTHON, __file__, "--child", str(out), str(launch), *overrides, f"hydra.run.dir={run_dir}"]
    wall, _ = run_process(cmd)
    times = json.loads(out.read_text())
    times["other"] = wall - sum(times.values())
    return {"wall": wall, **times}


def breakdown_handwritten(spec_path: Path, run_dir: Path) -> dict:
    launch = time.time()
    wall, stdout = run_process([PYTHON, "tools/handwritten_train.py", str(spec_path), str(run_dir)])
    times = json.loads(stdout.rsplit("TIMES ", 1)[1])
    times["startup"] = times.pop("first_step_at") - launch
    times["other"] = wall - sum(times.values())
    return {"wall": wall, **times}


def bench_e2e(reps: int, workdir: Path, quick: bool, only: list[str] | None = None) -> list[dict]:
    from bench_paired import available, bootstrap_median, compose
    from handwritten_train import cannot_write  # here: the --child process times train.py's own imports

    results = []
    for key, (label, overrides) in (QUICK if quick else RUNS).items():
        if (only and key not in only) or not available(overrides):
            continue
        spec = spec_of(compose(overrides, workdir / "compose"))
        if why := cannot_write(spec):
            print(f"e2e {key}: left out: tools/handwritten_train.py cannot write this run: {why}", flush=True)
            continue
        spec_path = workdir / f"e2e-{key}.json"
        spec_path.write_text(json.dumps(spec))
        template_cmd = [PYTHON, "train.py", *overrides]
        hand_cmd = [PYTHON, "tools/handwritten_train.py", str(spec_path)]
        order_rng = random.Random(7)
        walls = []
        # The default run gets every pair asked for; the longer task runs half as many (at least 3).
        pairs = reps if key == "default" or reps < 2 else max(3, reps // 2)
        for i in range(pairs if reps > 1 else 0):  # one rep (--quick): the instrumented pair below only
            sides = [("template", template_cmd), ("hand", hand_cmd)]
            order_rng.shuffle(sides)
            seconds = {}
            for side, cmd in sides:
                run_dir = workdir / f"e2e-{key}-{side}-{i}"
                extra = [f"hydra.run.dir={run_dir}"] if side == "template" else [str(run_dir)]
                seconds[side], _ = run_process([*cmd, *extra])
            walls.append((seconds["template"], seconds["hand"]))
        instrumented = min(reps, 3 if key == "default" else 1)
        parts_t = [breakdown_template(overrides, workdir / f"e2e-{key}-bt-{i}") for i in range(instrumented)]
        parts_h = [
            breakdown_handwritten(spec_path, workdir / f"e2e-{key}-bh-{i}") for i in range(instrumented)
        ]
        walls = walls or [(parts_t[0]["wall"], parts_h[0]["wall"])]
        ratios = [t / h for t, h in walls]
        med, low, high = bootstrap_median(ratios) if len(ratios) > 1 else (ratios[0],) * 3
        row = {
            "key": key,
            "label": label,
            "pairs": len(walls),
            "template": statistics.median(t for t, _ in walls),
            "hand": statistics.median(h for _, h in walls),
            "ratio": med,
            "low": low,
            "high": high,
            "parts_template": {k: statistics.median(p.get(k, 0.0) for p in parts_t) for k in parts_t[0]},
            "parts_hand": {k: statistics.median(p.get(k, 0.0) for p in parts_h) for k in parts_h[0]},
        }
        print(
            f"e2e {key}: template {row['template']:.2f} s, hand-written {row['hand']:.2f} s, ratio "
            f"{med:.3f} [{low:.3f}, {high:.3f}] over {len(walls)} pairs",
            flush=True,
        )
        results.append(row)
    return results


PARTS = ["startup", "steps", "validation", "pictures", "checkpoints", "event writes", "test", "other"]


def render_e2e(results: list[dict]) -> list[str]:
    out = [
        "End-to-end, whole processes, against `tools/handwritten_train.py` doing the same work (pairs in"
        " random order; the ratio is the median of per-pair template / hand-written wall time, with its 95%"
        " bootstrap interval; goal for the default run: at most 1.15):",
        "",
        "| run | pairs | template s | hand-written s | **ratio** | 95% interval |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        out.append(
            f"| {r['label']} | {r['pairs']} | {r['template']:.2f} | {r['hand']:.2f} | **{r['ratio']:.3f}** "
            f"| {r['low']:.3f} - {r['high']:.3f} |"
        )
    out += [
        "",
        "Where the time goes (seconds; instrumented runs of each, the median of 3 for the default run, 1 for"
        " the others; template / hand-written;"
        " startup is launch to the first step; other is the rest: loop bookkeeping, interpreter exit):",
        "",
        "| run | " + " | ".join(PARTS) + " | wall |",
        "|---|" + "---|" * (len(PARTS) + 1),
    ]
    for r in results:
        t, h = r["parts_template"], r["parts_hand"]
        cells = []
        for p in [*PARTS, "wall"]:
            hv = h.get(p)
            cells.append(f"{t.get(p, 0.0):.2f} / {hv:.2f}" if hv is not None else f"{t.get(p, 0.0):.2f} / -")
        out.append(f"| {r['key']} | " + " | ".join(cells) + " |")
    return out


# --- The instrumented child: train.py with timers around its parts ------------------------------------------


def child(out: Path, launch: float, argv: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    acc: dict[str, float] = defaultdict(float)
    stack: list[float] = []
    first = {}

    def wrap(owner, name: str, part: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if part == "steps" and "at" not in first:
                first["at"], first["parts"] = time.time(), sum(acc.values())
            start = time.perf_counter()
            stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                acc[part] += elapsed - stack.pop()
                if stack:
                    stack[-1] += elapsed

        setattr(owner, name, timed)

    import train  # imports no torch; the wraps below import what train.py would import anyway

    os.chdir(REPO)
    from torch.utils.tensorboard import SummaryWriter

    import board.dashboards as dashboards
    import loop.session as session

    wrap(train, "step", "steps")
    wrap(session.Session, "report", "steps")
    wrap(train, "validate", "validation")
    wrap(train, "save", "checkpoints")
    wrap(train, "test", "test")
    wrap(dashboards, "log_input_images", "pictures")
    for module, cls in (
        ("classification", "Classification"),
        ("regression", "Regression"),
        ("segmentation", "Segmentation"),
        ("language_modeling", "LanguageModeling"),
    ):
        with contextlib.suppress(ImportError, AttributeError):  # a fork may have deleted a task
            wrap(getattr(__import__(f"tasks.{module}", fromlist=[cls]), cls), "log_pictures", "pictures")
    for name in ("add_scalar", "add_image", "add_text", "add_histogram", "add_hparams", "flush", "close"):
        wrap(SummaryWriter, name, "event writes")
    wrap(dashboards, "log_run_start", "event writes")
    wrap(dashboards, "log_run_end", "event writes")
    sys.argv = ["train.py", *argv]
    # Hydra finds conf/ next to the file of a task function that runs as __main__, as `python train.py`.
    train.main.__wrapped__.__module__ = "__main__"
    try:
        train.main()
    except SystemExit as stop:
        if stop.code:
            raise
    times = dict(acc)
    # Launch to the first step, less the parts counted on their own before it (the run-start events).
    times["startup"] = first.get("at", time.time()) - launch - first.get("parts", 0.0)
    out.write_text(json.dumps(times))


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4:])
    else:
        sys.exit(__doc__)
