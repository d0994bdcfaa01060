"""Benchmark the template against the limit: a minimal hand-written PyTorch loop, in the same process.

    make bench                                  # CPU: mlp, simple_cnn, resnet18 at 32x32, the digits run
    python scripts/bench.py --device cuda       # on a GPU: resnet18 bf16 + channels_last, +/- compile
    python scripts/bench.py --quick --output /tmp/b.md   # seconds: what the smoke test runs

What is measured, and how:
- Throughput. The template side is `train.train(cfg)` itself, on a composed config, not a copy of its loop;
  it reports samples/s in metrics.json: every logging window but the first (warm-up, autotuning, compile),
  with validation and checkpoints kept out. The raw side is a plain loop over the same model init (same
  seed), the same loader batches (utils.loaders over the same Splits), the same optimizer and schedule,
  timed over the same windows, each closed by a sync. FakeData is decoded once into memory
  (data.dataset.in_memory=true) for both sides, so that the model and the loop are timed, not decoding.
  Template and raw runs alternate (ABBA) over several trials, so load from other processes hits both; the
  table gives medians. Both runs end with the same weights: the table shows the largest difference.
- Processes. On a shared 2-core VM a case's ratio moves by up to 0.08 from one process to the next, while
  the trials inside one process agree (memory layout, thread placement). So each case runs in
  --processes fresh processes (3 by default); the row gives the median ratio and lists every process's.
- Data wait: the raw loop's time blocked in next(loader) per step, for the in-memory batches and for the
  real FakeData path (DataLoader workers decoding images, persistent workers).
- Startup: `train.py --help` and Hydra's tab completion (and `-X importtime` proof that they do not
  import torch); time from launch to the end of the first step of the default run, next to the time
  `python -c "import torch, torchvision"` takes.
- Graph logging: utils.tensorboard.log_graph_once on a 2-sample slice of a resnet18 batch.
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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PYTHON = sys.executable


@dataclass
class Case:
    name: str
    overrides: list[str]
    warmup: int = 0  # steps in the first (untimed) logging window; 0: the config's own run
    steps: int = 0  # timed steps after it
    fake: bool = True  # FakeData: also report the data wait of the real (decoding) loader
    trials: int | None = None  # None: --trials
    warmup_trials: int | None = None  # None: --warmup-trials
    loader: bool = True  # also time the raw loop on the real (decoding) loader, for its data wait
    notes: list[str] = field(default_factory=list)

    def run_overrides(self, in_memory: bool = True) -> list[str]:
        if not self.fake:
            return list(self.overrides)
        return [
            *self.overrides,
            "data=fake",
            f"data.dataset.in_memory={str(in_memory).lower()}",
            f"data.dataset.train_size={self.batch_size * (self.warmup + self.steps)}",
            f"data.dataset.val_size={self.batch_size}",
            f"data.dataset.test_size={self.batch_size}",
            f"trainer.max_steps={self.warmup + self.steps}",
            f"logging.every_n_steps={self.warmup}",
        ]

    @property
    def batch_size(self) -> int:
        for o in self.overrides:
            if o.startswith("data.batch_size="):
                return int(o.split("=", 1)[1])
        raise ValueError(f"case {self.name} sets no data.batch_size")


def fake_case(name, model, batch_size, warmup, steps, *extra, **kwargs) -> Case:
    return Case(name, [f"model={model}", f"data.batch_size={batch_size}", *extra], warmup, steps, **kwargs)


def cases_for(device: str, quick: bool) -> dict[str, Case]:
    if quick:
        return {
            "mlp": fake_case("mlp", "mlp", 32, 2, 4),
            "digits": Case("digits (default run)", ["trainer.max_epochs=2"], fake=False),
        }
    if device == "cuda":
        bf16_cl = ["trainer.precision=bf16", "trainer.channels_last=true"]
        return {
            "digits": Case("digits (default run: mlp, 15 epochs)", [], fake=False),
            "resnet18-fp32": fake_case("resnet18 fp32", "resnet18", 128, 20, 100),
            "resnet18-bf16-cl": fake_case("resnet18 bf16+channels_last", "resnet18", 128, 20, 100, *bf16_cl),
            "resnet18-bf16-cl-compile": fake_case(
                "resnet18 bf16+channels_last+compile",
                "resnet18",
                128,
                20,
                100,
                *bf16_cl,
                "trainer.compile=true",
                # Each run compiles (the first window, untimed): one trial, no warm-up runs.
                trials=1,
                warmup_trials=0,
                loader=False,
            ),
        }
    return {
        "mlp": fake_case("mlp", "mlp", 128, 5, 20),
        "simple_cnn": fake_case("simple_cnn", "simple_cnn", 128, 2, 8),
        "resnet18": fake_case("resnet18", "resnet18", 32, 1, 4),
        "digits": Case("digits (default run: mlp, 15 epochs)", [], fake=False),
    }


# --- Running the template and the raw loop ---------------------------------------------------------------


def compose(overrides: list[str], run_dir: Path):
    """The config as `python train.py OVERRIDES hydra.run.dir=RUN_DIR` sees it (as tests/helpers does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from utils.rundir import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", [*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_template(overrides: list[str], run_dir: Path) -> dict:
    import torch

    import train

    cfg = compose(overrides, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train.train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
    return {"samples_per_s": metrics["samples_per_s"], "state": state}


def run_raw(overrides: list[str], run_dir: Path) -> dict:
    """A minimal loop, hand-written: what the template's loop must keep up with."""
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    from train import build
    from utils.config import check_config
    from utils.loaders import build_dataloaders
    from utils.runtime import fused_on_cuda, pick_device, seed_everything

    cfg = compose(overrides, run_dir)
    check_config(cfg)
    t = cfg.trainer
    assert t.accumulate_grad_batches == 1 and not t.limit_batches and not t.grad_clip
    assert str(t.precision) in ("32", "bf16"), "the raw loop has no GradScaler"

    seed_everything(t.seed, t.deterministic)  # same seed, same order of draws: same init as the template
    device = pick_device(t.device)
    torch.backends.cudnn.benchmark = t.cudnn_benchmark and not t.deterministic
    splits = instantiate(cfg.data.dataset)
    loaders = build_dataloaders(
        splits,
        cfg.data.batch_size,
        cfg.data.num_workers,
        t.seed,
        pin_memory=device.type == "cuda",
        device=device,
    )
    total = t.max_steps or t.max_epochs * len(loaders.train)
    model = build("model", cfg.model).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = instantiate(fused_on_cuda(cfg.optimizer, device))(model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=total)
    forward = torch.compile(model) if t.compile else model
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if str(t.precision) == "bf16"
        else contextlib.nullcontext()
    )
    every = cfg.logging.every_n_steps

    windows = []  # (samples, seconds, seconds waiting for data, steps)
    step, epoch, seen, wait, n = 0, 0, 0, 0.0, 0
    model.train()
    start = time.perf_counter()
    while step < total:
        loaders.train.set_epoch(epoch)
        batches = iter(loaders.train)
        while step < total:
            before = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - before
            if batch is None:
                break
            x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with amp:
                loss = F.cross_entropy(forward(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step, seen, n = step + 1, seen + y.shape[0], n + 1
            if step % every == 0 or step == total:
                loss.item()  # sync, as the template does at each log
                now = time.perf_counter()
                windows.append((seen, now - start, wait, n))
                seen, wait, n = 0, 0.0, 0
                start = time.perf_counter()
        epoch += 1
    steady = windows[1:] or windows
    samples, seconds, waited, steps = (sum(w[k] for w in steady) for k in range(4))
    return {
        "samples_per_s": samples / seconds,
        "step_ms": 1000 * seconds / steps,
        "wait_ms": 1000 * waited / steps,
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def max_weight_diff(a: dict, b: dict) -> float:
    return max(
        (float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point()), default=0.0
    )


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_case(case: Case, device: str, trials: int, warmup_trials: int, workdir: Path) -> dict:
    overrides = [*case.run_overrides(), f"trainer.device={device}", "logging.progress_bar=false"]
    overrides += ["logging.graph=false"]
    template, raw, diffs, waits, steps_ms = [], [], [], [], []
    for _ in range(warmup_trials if case.warmup_trials is None else case.warmup_trials):
        # Untimed: the first runs in a process pay one-off costs (first-touch memory, kernel caches).
        for side, fn in (("template", run_template), ("raw", run_raw)):
            fn(overrides, workdir / f"warmup-{side}")
            shutil.rmtree(workdir / f"warmup-{side}", ignore_errors=True)
    for trial in range(case.trials or trials):
        results = {}
        # ABBA: the side that runs first alternates, so drifting load from other processes hits both.
        for side in ("template", "raw") if trial % 2 == 0 else ("raw", "template"):
            run_dir = workdir / re.sub(r"[^A-Za-z0-9_-]+", "_", f"{case.name}-{trial}-{side}")
            fn = run_template if side == "template" else run_raw
            results[side] = fn(overrides, run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            free_memory()
        template.append(results["template"]["samples_per_s"])
        raw.append(results["raw"]["samples_per_s"])
        waits.append(results["raw"]["wait_ms"])
        steps_ms.append(results["raw"]["step_ms"])
        diffs.append(max_weight_diff(results["template"]["state"], results["raw"]["state"]))
        print(
            f"  {case.name} trial {trial + 1}: template {template[-1]:.1f}/s, raw {raw[-1]:.1f}/s",
            flush=True,
        )
    row = {
        "case": case.name,
        "batch": case.batch_size if case.fake else compose(overrides, workdir / "c").data.batch_size,
        "timed_steps": case.steps or "all but the first window",
        "trials": len(template),
        "template": statistics.median(template),
        "raw": statistics.median(raw),
        "ratio": statistics.median(template) / statistics.median(raw),
        "step_ms": statistics.median(steps_ms),
        "wait_ms": statistics.median(waits),
        "weight_diff": max(diffs),
        "loader_wait_ms": None,
    }
    if case.fake and case.loader:
        # The real FakeData path: images decoded per sample by DataLoader workers (data.num_workers).
        loader_overrides = [*case.run_overrides(in_memory=False), f"trainer.device={device}"]
        real = run_raw(loader_overrides, workdir / "loader")
        row["loader_wait_ms"], row["loader_step_ms"] = real["wait_ms"], real["step_ms"]
        free_memory()
    return row


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

    from utils.tensorboard import log_graph_once, open_writer

    cfg = compose([f"model={model_name}", "data=fake"], workdir / "graph")
    from train import build

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


def merge_processes(runs: list[dict]) -> dict:
    """One case's rows from several fresh processes, as one: medians, the largest weight difference, and
    every process's ratio, since the spread between processes is the noise to read the ratio against."""
    row = dict(runs[0])
    for key in ("template", "raw", "step_ms", "wait_ms", "ratio", "loader_wait_ms", "loader_step_ms"):
        if row.get(key) is not None:
            row[key] = statistics.median(r[key] for r in runs)
    row["trials"] = sum(r["trials"] for r in runs)
    row["weight_diff"] = max(r["weight_diff"] for r in runs)
    row["ratios"] = [r["ratio"] for r in runs]
    return row


def bench_in_processes(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Run one case in args.processes fresh processes of this script; their rows, merged."""
    runs = []
    for p in range(args.processes):
        out = workdir / f"{name}-{p}.json"
        cmd = [PYTHON, __file__, "--device", args.device, "--cases", name, "--processes", "1", "--no-startup"]
        cmd += ["--no-graph", "--warmup-trials", str(args.warmup_trials), "--json", str(out)]
        cmd += ["--output", str(workdir / f"{name}-{p}.md"), *(["--quick"] if args.quick else [])]
        cmd += [*(["--trials", str(args.trials)] if args.trials else []), "--extra", *args.extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        rows = json.loads(out.read_text())["rows"] if out.exists() else []
        if proc.returncode != 0 or not rows:
            raise RuntimeError(f"process {p + 1}: " + (proc.stdout + proc.stderr).strip().splitlines()[-1])
        print(f"  process {p + 1}/{args.processes}: ratio {rows[0]['ratio']:.3f}", flush=True)
        runs.append(rows[0])
    return merge_processes(runs)


def render(device: str, rows: list[dict], startup: dict | None, graph: dict | None, note: str) -> str:
    today = datetime.date.today().isoformat()
    out = [f"### {device.upper()}: {machine(device)}", "", f"Measured {today}. {note}".strip(), ""]
    out += [
        "| case | batch | timed steps | trials | template samples/s | raw loop samples/s | **ratio** "
        "| ratio, each process | raw step ms | data wait/step, in memory | data wait/step, FakeData workers "
        "| max weight diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        loader = "n/a (in-memory dataset)"
        if r["loader_wait_ms"] is not None:
            loader = f"{r['loader_wait_ms']:.2f} ms (step {r['loader_step_ms']:.1f} ms)"
        out.append(
            f"| {r['case']} | {r['batch']} | {r['timed_steps']} | {r['trials']} | {r['template']:.1f} "
            f"| {r['raw']:.1f} | **{r['ratio']:.3f}** | {' '.join(f'{x:.3f}' for x in r.get('ratios', [r['ratio']]))} "
            f"| {r['step_ms']:.2f} | {r['wait_ms']:.3f} ms "
            f"| {loader} | {r['weight_diff']:.1e} |"
        )
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

Written by `make bench` (`scripts/bench.py`; its docstring says exactly what is measured). The ratio is the
template's training throughput over a minimal hand-written loop's, run in the same process on the same model
init, batches, optimizer and schedule; goal: at least 0.98. Each case runs in several fresh processes (the
ratio moves more between processes than between trials in one); the row gives the median and lists them all.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="tiny step counts: checks that it runs")
    parser.add_argument("--cases", help="comma-separated case names (default: all for the device)")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides added to every case")
    parser.add_argument("--trials", type=int, default=None, help="interleaved trials per case")
    parser.add_argument(
        "--processes", type=int, default=None, help="fresh processes per case (default: 3; 1 with --quick)"
    )
    parser.add_argument("--warmup-trials", type=int, default=1, help="untimed runs of both sides first")
    parser.add_argument("--startup-reps", type=int, default=None)
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--no-graph", action="store_true")
    parser.add_argument("--note", default="", help="a line for the report (e.g. the machine's load)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    trials = args.trials or (1 if args.quick else 3)
    processes = args.processes = args.processes or (1 if args.quick else 3)
    all_cases = cases_for(args.device, args.quick)
    names = args.cases.split(",") if args.cases else list(all_cases)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        rows, failed = [], []
        for name in names:
            case = all_cases[name]
            case.overrides += args.extra
            print(f"{case.name}: {case.trials or trials} trial(s) in {processes} process(es)", flush=True)
            try:
                if processes > 1:
                    row = bench_in_processes(name, args, workdir)
                else:
                    row = bench_case(case, args.device, trials, args.warmup_trials, workdir)
            except Exception as err:  # one broken case must not lose the others' numbers
                if args.quick:
                    raise
                print(f"FAILED {case.name}: {type(err).__name__}: {err}", flush=True)
                failed.append(f"{case.name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
                free_memory()
                continue
            rows.append(row)
            print(
                f"ratio {row['case']}: {row['ratio']:.3f} "
                f"(template {row['template']:.1f} samples/s, raw loop {row['raw']:.1f} samples/s, "
                f"data wait {row['wait_ms']:.3f} ms/step)",
                flush=True,
            )
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
            graph = bench_graph("mlp" if args.quick else "resnet18", 1 if args.quick else 3, workdir)
            print(f"graph: {graph['model']} {graph['first']:.2f} s first, {graph['warm']:.2f} s warm")
        text = render(args.device, rows, startup, graph, args.note)
        if failed:
            text += "\nFailed: " + "; ".join(failed) + "\n"
        write_section(args.output, args.device, text)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "startup": startup, "graph": graph}, indent=2))
        print(text)
        print(f"Wrote {args.output}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
