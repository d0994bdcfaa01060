"""Benchmark the template against the limit: a minimal hand-written PyTorch loop.

    make bench                                  # CPU: every case below, then the end-to-end runs
    python tools/bench.py --device cuda       # on a GPU: resnet18 bf16 + channels_last, the GPT, digits
    python tools/bench.py --quick --output /tmp/b.md   # seconds: what the smoke test runs

What is measured, and how:
- Throughput, paired (tools/bench_paired.py). In one process, the template's own step code (train.set_up
  once, then train.train_on_batch, the body of train.fit's loop, on each batch) and a hand-written loop
  (nanoGPT-style for the GPT) alternate in short blocks of steps, in random order per pair, on equal model
  copies and the same batches. Each case: the median of the per-pair ratios (raw seconds / template
  seconds, i.e. template throughput / raw throughput), its 95% bootstrap interval, and a verdict against
  0.98 (meets: the lower bound is >= 0.98; below: the upper bound is < 0.98; else cannot tell). Pairs are
  added until the interval is at most +-0.02 (--target) or the case's time limit. Both sides must end with
  identical weights (checked un-interleaved first, and again after the pairs): they did the same work.
- End-to-end (tools/bench_e2e.py): whole processes, `python train.py` and each task's quick run against
  tools/handwritten_train.py doing the same work; wall-time ratio with its interval, and where the
  template's extra time goes.
- Startup: `train.py --help` and Hydra's tab completion (and `-X importtime` proof that they do not
  import torch); time from launch to the end of the first step of the default run, next to the time
  `python -c "import torch, torchvision"` takes.
- Graph logging: board.writer.log_graph_once on a 2-sample slice of a resnet18 batch.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from bench_paired import Paired, available, compose, measure  # noqa: E402
from default_run import label as default_run_label  # noqa: E402

PYTHON = sys.executable

LM = ["task=language_modeling", "data=pytext", "model=gpt"]


def cases_for(device: str, quick: bool) -> dict[str, Paired]:
    """The cases whose models, datasets and tasks this checkout has."""
    return {k: c for k, c in all_cases_for(device, quick).items() if available(c.all_overrides())}


def all_cases_for(device: str, quick: bool) -> dict[str, Paired]:
    if quick:
        tiny_lm = [*LM, "data.block_size=32", "data.batch_size=8", "data.dataset.max_bytes=200000"]
        tiny_lm += ["model.n_layer=1", "model.n_embd=32", "model.n_head=2"]
        fast = {"min_pairs": 10, "max_pairs": 10, "warmup_blocks": 1}
        return {
            "mlp": Paired("mlp", ["model=mlp"], block=2, batch=32, **fast),
            "lm": Paired("gpt (language modeling)", tiny_lm, block=2, **fast),
        }
    if device == "cuda":
        bf16_cl = ["trainer.precision=bf16", "trainer.channels_last=true"]
        return {
            "digits": Paired(f"default run: {default_run_label()}", [], block=50, max_seconds=120),
            "resnet18-bf16-cl": Paired("resnet18 bf16+channels_last", ["model=resnet18", *bf16_cl], 50, 128),
            "lm": Paired("gpt (language modeling) bf16", [*LM, "trainer.precision=bf16"], block=50),
        }
    return {
        "mlp": Paired("mlp", ["model=mlp"], block=40, batch=128),
        "simple_cnn": Paired("simple_cnn", ["model=simple_cnn"], block=10, batch=128),
        "resnet18": Paired("resnet18", ["model=resnet18"], block=10, batch=32, epoch_blocks=2),
        # Its pairs take a tenth of a second: many of them narrow the interval well below +-0.02.
        "digits": Paired(f"default run: {default_run_label()}", [], block=50, min_pairs=200),
        "lm": Paired("gpt (language modeling)", LM, block=10),
    }


def free_memory() -> None:
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- Startup and graph logging ---------------------------------------------------------------------------


def wall(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def imports_torch(args: list[str], env: dict | None = None) -> bool:
    out = subprocess.run(
        [PYTHON, "-X", "importtime", *args], cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in out.stderr.splitlines())


def first_step_seconds(run_dir: Path) -> float:
    """Launch to the end of the first optimizer step of the default run: the step's log line (it follows
    the step's sync) is read from the child's stdout as it is printed."""
    cmd = [
        PYTHON,
        "train.py",
        "trainer.max_steps=1",
        "logging.every_n_steps=1",
        "logging.progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if seen is None and re.search(r"step 1/1 ", line):
            seen = time.perf_counter() - start
    proc.wait()
    shutil.rmtree(run_dir, ignore_errors=True)
    if seen is None or proc.returncode:
        raise RuntimeError("the first-step run failed:\n" + "".join(lines[-20:]))
    return seen


def bench_startup(reps: int, workdir: Path) -> dict:
    completion_env = {**os.environ, "COMP_LINE": "python train.py model=", "COMP_POINT": "22"}
    help_cmd = [PYTHON, "train.py", "--help"]
    completion_cmd = [PYTHON, "train.py", "-sc", "query=bash"]
    import_cmd = [PYTHON, "-c", "import torch, torchvision"]
    helps, completions, imports, firsts = [], [], [], []
    for i in range(reps):  # interleaved, so that load from other processes hits all four alike
        helps.append(wall(help_cmd))
        completions.append(wall(completion_cmd, completion_env))
        imports.append(wall(import_cmd))
        firsts.append(first_step_seconds(workdir / f"first-{i}"))
    return {
        "help": statistics.median(helps),
        "completion": statistics.median(completions),
        "help_imports_torch": imports_torch(["train.py", "--help"]),
        "completion_imports_torch": imports_torch(["train.py", "-sc", "query=bash"], completion_env),
        "import_torch": statistics.median(imports),
        "first_step": statistics.median(firsts),
        "reps": reps,
    }


def bench_graph(model_name: str, reps: int, workdir: Path) -> dict:
    """log_graph_once as train.py calls it at the first step: one trace of a 2-sample slice."""
    import torch

    from board.writer import log_graph_once, open_writer

    cfg = compose([f"model={model_name}", "data=fake"], workdir / "graph")
    from setup.parts import build

    model = build("model", cfg.model)
    example = torch.randn(2, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    times = []
    for i in range(reps):
        writer = open_writer(workdir / f"graph-tb-{i}")
        start = time.perf_counter()
        ok = log_graph_once(writer, model, example)
        times.append(time.perf_counter() - start)
        writer.close()
        assert ok, "the graph was not logged"
    return {"model": model_name, "first": times[0], "warm": statistics.median(times[1:] or times)}


# --- Report -------------------------------------------------------------------------------------------------


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        name += f", {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    return f"{name}; torch {torch.__version__}, Python {platform.python_version()}"


def render(device: str, rows: list[dict], e2e: list[dict] | None, startup, graph, note: str, target) -> str:
    today = datetime.date.today().isoformat()
    out = [f"### {device.upper()}: {machine(device)}", "", f"Measured {today}. {note}".strip(), ""]
    if rows:
        total = sum(r["seconds"] for r in rows)
        out += [
            f"Throughput, paired and interleaved in one process (`python tools/bench.py --device {device}`;"
            f" pairs added until the 95% interval is at most +-{target}; {total:.0f} s of pairs in all):",
            "",
            "| case | batch | block (steps) | pairs | seconds | template /s | raw loop /s | **ratio** "
            "| 95% interval | verdict (>= 0.98) | raw step ms | max weight diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {r['case']} | {r['batch']} | {r['block']} | {r['pairs']} | {r['seconds']:.0f} "
                f"| {r['template']:.1f} {r['unit']} | {r['raw']:.1f} {r['unit']} | **{r['ratio']:.3f}** "
                f"| {r['low']:.3f} - {r['high']:.3f} | {r['verdict']} | {r['raw_step_ms']:.2f} "
                f"| {max(r['weight_diff'], r['weight_diff_after']):.1e} |"
            )
    if e2e:
        from bench_e2e import render_e2e

        out += ["", *render_e2e(e2e)]
    if startup:
        s = startup
        out += [
            "",
            f"Startup (median of {s['reps']}, interleaved):",
            "",
            "| measure | seconds |",
            "|---|---|",
            f"| `python train.py --help` (imports torch: {'yes' if s['help_imports_torch'] else 'no'}) "
            f"| {s['help']:.2f} |",
            f"| tab completion, `train.py -sc query=bash` (imports torch: "
            f"{'yes' if s['completion_imports_torch'] else 'no'}) | {s['completion']:.2f} |",
            f'| `python -c "import torch, torchvision"` | {s["import_torch"]:.2f} |',
            f"| launch to end of first training step, default run | {s['first_step']:.2f} |",
            f"| **first step minus import torch, torchvision** | **{s['first_step'] - s['import_torch']:.2f}** |",
        ]
    if graph:
        out += [
            "",
            f"Graph logging (`log_graph_once`, {graph['model']}, 2-sample slice at 32x32): "
            f"{graph['first']:.2f} s at the first trace in the process, {graph['warm']:.2f} s warm.",
        ]
    return "\n".join(out) + "\n"


HEADER = """# Benchmarks

Written by `make bench` (`tools/bench.py`; its docstring says exactly what is measured). The ratio is the
template's training throughput over a minimal hand-written loop's, measured in one process in interleaved
pairs of short blocks on equal model copies and the same batches; goal: at least 0.98, judged by the 95%
interval. The end-to-end table compares whole runs against `tools/handwritten_train.py`.
Each device's section is replaced when the benchmark runs on that device.
"""


def write_section(path: Path, device: str, text: str) -> None:
    begin, end = f"<!-- bench:{device} -->", f"<!-- /bench:{device} -->"
    doc = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{text}{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)


def run_case(name: str, case: Paired, args, workdir: Path) -> dict:
    case.overrides += args.extra
    run_dir = workdir / name
    cfg = compose(case.all_overrides(), run_dir)
    if args.max_seconds:
        case.max_seconds = args.max_seconds
    return measure(case, cfg, run_dir, args.target, log=lambda s: print(s, flush=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="tiny cases, few pairs: checks that it runs")
    parser.add_argument("--cases", help="comma-separated case names (default: all for the device)")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides added to every case")
    parser.add_argument("--target", type=float, default=0.02, help="stop at this interval half-width")
    parser.add_argument("--max-seconds", type=float, default=None, help="time limit of each case's pairs")
    parser.add_argument("--e2e-reps", type=int, default=None, help="end-to-end pairs per run (0: none)")
    parser.add_argument("--e2e-only", help="only the end-to-end runs named (comma-separated; all: every one)")
    parser.add_argument("--startup-reps", type=int, default=None)
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--no-graph", action="store_true")
    parser.add_argument(
        "--threads", type=int, help="torch threads for both sides (default: torch's); 1 steadies a loaded VM"
    )
    parser.add_argument("--note", default="", help="a line for the report (e.g. the machine's load)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    if args.quick and not args.threads:
        args.threads = 1  # a smoke test: one thread does not stall when the machine is busy
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    all_cases = cases_for(args.device, args.quick)
    names = args.cases.split(",") if args.cases else list(all_cases)
    if unknown := [n for n in names if n not in all_cases]:
        parser.error(f"no case {', '.join(unknown)} here (this checkout has: {', '.join(all_cases)})")
    if args.e2e_only:
        names, args.no_startup, args.no_graph = [], True, True
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    load = os.getloadavg()
    try:
        rows, failed = [], []
        for name in names:
            case = all_cases[name]
            print(f"{case.name}: blocks of {case.block} steps", flush=True)
            try:
                rows.append(run_case(name, case, args, workdir))
            except Exception as err:  # one broken case must not lose the others' numbers
                if args.quick:
                    raise
                print(f"FAILED {case.name}: {type(err).__name__}: {err}", flush=True)
                failed.append(f"{case.name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            free_memory()
        e2e = None
        reps = args.e2e_reps if args.e2e_reps is not None else (1 if args.quick else 10)
        if reps and args.device == "cpu" and (args.e2e_only or not args.cases):
            from bench_e2e import bench_e2e

            only = None if args.e2e_only in (None, "all") else args.e2e_only.split(",")
            e2e = bench_e2e(reps, workdir, args.quick, only)
        startup = None
        if not args.no_startup and args.device == "cpu":
            startup = bench_startup(args.startup_reps or (1 if args.quick else 5), workdir)
            print(
                f"startup: --help {startup['help']:.2f} s, completion {startup['completion']:.2f} s, "
                f"import torch+torchvision {startup['import_torch']:.2f} s, "
                f"first step {startup['first_step']:.2f} s",
                flush=True,
            )
        graph = None
        if not args.no_graph:
            model = "mlp" if args.quick or not available(["model=resnet18"]) else "resnet18"
            if available([f"model={model}", "data=fake"]):
                graph = bench_graph(model, 1 if args.quick else 3, workdir)
                print(f"graph: {graph['model']} {graph['first']:.2f} s first, {graph['warm']:.2f} s warm")
        end_load = os.getloadavg()
        note = args.note or (
            f"Load average (1 min) {load[0]:.1f} at the start, {end_load[0]:.1f} at the end, "
            f"on {os.cpu_count()} cores."
        )
        text = render(args.device, rows, e2e, startup, graph, note, args.target)
        if failed:
            text += "\nFailed: " + "; ".join(failed) + "\n"
        write_section(args.output, args.device, text)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "e2e": e2e, "startup": startup, "graph": graph}))
        print(text)
        print(f"Wrote {args.output}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
