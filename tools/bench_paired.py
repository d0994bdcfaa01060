"""Paired, interleaved throughput: the template's own step code against a hand-written loop, in one process.

The template side is built by `train.set_up` and driven as `train.fit` drives it: train.py's own
`train_on_batch` on each batch (the batch check, `step`, the throughput count, the session's bar and log
line at every logging interval, the stop check: fit's whole body, not a copy of it).
Only the epoch ends (validation, checkpoints) are left out; `tools/bench_e2e.py` times those, as whole
runs. The raw side is a minimal loop written here (forward, the loss written out by hand, backward,
optimizer and schedule step, `loss.item()` at each logging interval), nanoGPT-style for language modeling,
on an equal copy of the same initial model, the same optimizer (setup/parts.py's `build_optimizer`, with
the run's parameter groups) and schedule, and the same batches (its own
`setup.loaders` over the same splits and seed: the same batches in the same order).

The two sides alternate in short blocks of steps, in an order drawn at random for each pair, so that load
from other processes hits both alike; each block ends with a device sync. A pair's ratio is
(raw block seconds) / (template block seconds): both blocks trained on the same number of samples, so it
is the template's throughput over the raw loop's. Pairs are added until the 95% bootstrap interval of the
median ratio is at most +-`target` wide (or a time limit is reached). Each side keeps its own random state
(dropout) between its blocks, so the interleaving does not change what either side computes.

Same work: before the interleaved pairs, the template runs a few blocks, then the raw loop runs the same
blocks from the same initial weights and random state (un-interleaved); their weights must then match. The
same check is repeated after the interleaved pairs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Paired:
    name: str
    overrides: list[str]
    block: int  # steps per block
    batch: int = 0  # samples per batch, for the fake-data sizing (0: the config's own data)
    epoch_blocks: int = 4  # fake data: one epoch holds this many blocks
    min_pairs: int = 20
    max_pairs: int = 2000
    max_seconds: float = 240.0
    warmup_blocks: int = 2
    notes: list[str] = field(default_factory=list)

    def all_overrides(self) -> list[str]:
        out = list(self.overrides)
        if self.batch:
            n = self.batch * self.block * self.epoch_blocks
            out += [
                "data=fake",
                "data.dataset.in_memory=true",
                f"data.batch_size={self.batch}",
                f"data.dataset.train_size={n}",
                f"data.dataset.val_size={self.batch}",
                f"data.dataset.test_size={self.batch}",
            ]
        # A long schedule, so that the pairs never run past its end (the lr only changes, not the cost).
        return [*out, "trainer.max_steps=1000000", "trainer.max_epochs=1000000"]


CONF = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str], run_dir: Path):
    """The config as `python train.py OVERRIDES hydra.run.dir=RUN_DIR` sees it (as tests/helpers does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from store.rundir import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", [*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def available(overrides: list[str], conf: Path = CONF) -> bool:
    """Whether every config a case names (`model=gpt`, `experiment=shapes_unet`, ...) is in this checkout:
    a project generated with only some models, datasets and tasks benchmarks those it has."""
    for override in overrides:
        group, _, name = override.partition("=")
        if (conf / group).is_dir() and not (conf / group / f"{name}.yaml").is_file():
            return False
    return True


def bootstrap_median(ratios: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The median and its 95% percentile-bootstrap interval, resampling pairs."""
    a = np.asarray(ratios)
    rng = np.random.default_rng(seed)
    medians = np.median(a[rng.integers(0, len(a), size=(reps, len(a)))], axis=1)
    return float(np.median(a)), float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def verdict(low: float, high: float, goal: float = 0.98) -> str:
    if low >= goal:
        return "meets"
    if high < goal:
        return "below"
    return "cannot tell"


class Batches:
    """Endless batches from a loader, epoch after epoch (set_epoch, then a fresh iterator), with their
    index in the epoch, as train.fit sees them."""

    def __init__(self, loader, per_epoch: int) -> None:
        self.loader, self.per_epoch, self.epoch, self.it = loader, per_epoch, -1, None

    def next(self):
        while True:
            if self.it is not None:
                got = next(self.it, None)
                if got is not None and got[0] < self.per_epoch:
                    return self.epoch, got[0], got[1]
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self.it = enumerate(self.loader)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class Template:
    """train.py's side: its own set_up once, then blocks of steps through its own `train_on_batch`, the
    body of fit's loop over batches."""

    def __init__(self, cfg, run_dir: Path) -> None:
        import torch

        import train
        from board.dashboards import run_writer
        from loop.session import Session
        from system.signals import StopSignals

        self.train = train
        parts, state = train.set_up(cfg, run_dir)
        self.held = contextlib.ExitStack()  # the writer, closed by close()
        parts.writer = self.held.enter_context(run_writer(parts, None))
        self.run, self.state = parts, state
        self.session = Session(parts, state, StopSignals())
        self.batches = Batches(parts.loaders.train, parts.plan.batches_per_epoch)
        parts.train_model.train()
        self.initial = copy.deepcopy(parts.model.state_dict())
        self.rng = torch.get_rng_state()

    def block(self, steps: int) -> int:
        """`steps` optimizer steps, each batch through train.fit's own body (its validation and checkpoint
        branches are there, off as the cases leave them); returns the steps taken."""
        parts, state, session, done = self.run, self.state, self.session, 0
        while done < steps:
            state.epoch, i, batch = self.batches.next()
            before = state.step
            self.train.train_on_batch(parts, state, session, batch, i)
            done += state.step - before  # 0: accumulating gradients, or a skipped non-finite batch
            if state.stop_reason:
                raise KeyboardInterrupt(state.stop_reason)
        sync(parts.device)
        return done

    def close(self) -> None:
        self.session.__exit__(None, None, None)
        self.held.close()


class Raw:
    """A hand-written loop over an equal copy of the model, its own optimizer, schedule and batches."""

    def __init__(self, tpl: Template) -> None:
        import torch
        import torch.nn.functional as F
        from hydra.utils import instantiate

        from setup.loaders import build_dataloaders
        from setup.parts import build_optimizer

        run = tpl.run
        t = run.trainer
        assert t.accumulate_grad_batches == 1 and not t.grad_clip and not t.skip_nonfinite
        assert str(t.precision) in ("32", "bf16"), "the raw loop has no GradScaler"
        self.device, self.every = run.device, run.logging.every_n_steps
        model = copy.deepcopy(run.model)
        model.load_state_dict(tpl.initial)
        model.train()
        self.model = model
        self.forward = torch.compile(model) if t.compile else model
        self.optimizer = build_optimizer(run.cfg, model, run.device)  # as train.set_up: the same groups
        self.scheduler = instantiate(run.cfg.scheduler)(self.optimizer, total_steps=run.plan.total_steps)
        splits = instantiate(run.cfg.data.dataset)
        loaders = build_dataloaders(
            splits, run.cfg.data.batch_size, run.cfg.data.num_workers, t.seed,
            pin_memory=run.device.type == "cuda", device=run.device,
        )  # fmt: skip
        self.batches = Batches(loaders.train, run.plan.batches_per_epoch)
        self.channels_last, self.step = t.channels_last, 0
        self.amp = (
            (lambda: torch.autocast(run.device.type, dtype=torch.bfloat16))
            if str(t.precision) == "bf16"
            else None
        )
        self.rng = tpl.rng.clone()
        # The loss, written out as one would by hand.
        if run.task.unit == "tokens":  # nanoGPT: x = tokens[:, :-1], y = tokens[:, 1:], CE over B*T rows

            def loss_of(batch):
                tokens = batch[0].to(self.device, non_blocking=True)
                x, y = tokens[:, :-1], tokens[:, 1:]
                logits = self.forward(x)
                return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))

        else:

            def loss_of(batch):
                x, y = (
                    batch[0].to(self.device, non_blocking=True),
                    batch[1].to(self.device, non_blocking=True),
                )
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                return F.cross_entropy(self.forward(x), y)

        self.loss_of = loss_of

    def block(self, steps: int) -> int:
        optimizer, scheduler, every, amp = self.optimizer, self.scheduler, self.every, self.amp
        for _ in range(steps):
            _, _, batch = self.batches.next()
            if amp:
                with amp():
                    loss = self.loss_of(batch)
            else:
                loss = self.loss_of(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            self.step += 1
            if self.step % every == 0:
                loss.item()  # the one sync per logging interval, as nanoGPT's log_interval
        sync(self.device)
        return steps


def max_weight_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(((sa[k].float() - sb[k].float()).abs().max().item() for k in sa if sa[k].numel()), default=0.0)


def timed(side, steps: int) -> float:
    """One block of one side, with that side's own random state; seconds."""
    import torch

    torch.set_rng_state(side.rng)
    start = time.perf_counter()
    side.block(steps)
    seconds = time.perf_counter() - start
    side.rng = torch.get_rng_state()
    return seconds


def measure(case: Paired, cfg, run_dir: Path, target: float, log=print) -> dict:
    """One case: the un-interleaved same-work check, then interleaved pairs until the interval is narrow."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # The run's train.log, as Hydra's job logging writes it: report()'s log line is part of the loop's cost.
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    train_log = logging.getLogger("train")
    train_log.addHandler(handler)
    train_log.setLevel(logging.INFO)
    train_log.propagate = False
    tpl = Template(cfg, run_dir)
    try:
        raw = Raw(tpl)
        run = tpl.run
        per_sample = run.task.count(next(iter(raw.batches.loader)))  # units in one batch
        # Same work, un-interleaved: the template's first blocks (graph, images and allocator warm-up
        # included), then the raw loop's, from the same weights, random state and batches.
        for _ in range(case.warmup_blocks):
            timed(tpl, case.block)
        for _ in range(case.warmup_blocks):
            timed(raw, case.block)
        diff_before = max_weight_diff(run.model, raw.model)
        rng = random.Random(1)
        pairs: list[tuple[float, float]] = []
        ratios: list[float] = []
        start = time.perf_counter()
        low = high = med = float("nan")
        while True:
            order = [tpl, raw] if rng.random() < 0.5 else [raw, tpl]
            seconds = {id(side): timed(side, case.block) for side in order}
            t_tpl, t_raw = seconds[id(tpl)], seconds[id(raw)]
            pairs.append((t_tpl, t_raw))
            ratios.append(t_raw / t_tpl)
            n = len(pairs)
            if n >= 10 and n % 10 == 0:
                med, low, high = bootstrap_median(ratios)
                elapsed = time.perf_counter() - start
                narrow = n >= case.min_pairs and (high - low) / 2 <= target
                if narrow or elapsed > case.max_seconds or n >= case.max_pairs:
                    break
        elapsed = time.perf_counter() - start
        diff_after = max_weight_diff(run.model, raw.model)
        units = case.block * per_sample
        tpl_rate = statistics.median(units / a for a, _ in pairs)
        raw_rate = statistics.median(units / b for _, b in pairs)
        row = {
            "case": case.name,
            "unit": run.task.unit,
            "batch": run.cfg.data.batch_size,
            "block": case.block,
            "pairs": len(pairs),
            "seconds": elapsed,
            "template": tpl_rate,
            "raw": raw_rate,
            "ratio": med,
            "low": low,
            "high": high,
            "verdict": verdict(low, high),
            "raw_step_ms": 1000 * statistics.median(b for _, b in pairs) / case.block,
            "weight_diff": diff_before,
            "weight_diff_after": diff_after,
            "notes": case.notes,
        }
        log(
            f"ratio {case.name}: {med:.3f} [{low:.3f}, {high:.3f}] {row['verdict']} "
            f"({len(pairs)} pairs of {case.block} steps in {elapsed:.0f} s; template {tpl_rate:.1f} "
            f"{run.task.unit}/s, raw loop {raw_rate:.1f}; weight diff {diff_before:.1e} / {diff_after:.1e})"
        )
        return row
    finally:
        tpl.close()
        train_log.removeHandler(handler)
        handler.close()
