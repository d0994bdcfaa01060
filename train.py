"""Train a model on a task, both chosen by Hydra config, with a plain PyTorch loop.

    python train.py                                     # classification: mlp on scikit-learn's digits
    python train.py model=resnet18 logging.graph=true   # the graph shows in TensorBoard's GRAPHS tab
    python train.py experiment=<name>                   # a saved experiment (conf/experiment/)

The story: check the config, build the task, data and model, train (validating every few epochs and
keeping the weights that score best on the task's monitored metric), test those weights, write
metrics.json. The task (tasks/) owns the loss, the metrics and the pictures; this file knows none of them.
Everything lands in the run directory that Hydra made for this run; helpers live in utils/.
"""

from __future__ import annotations

# First, before anything slow: Ctrl-C or SIGTERM from here on ends in one line, never a traceback.
from utils.signals import Interrupted, interruption, stop_while_starting  # isort: skip

if __name__ == "__main__":  # eval.py imports this file, and keeps its own handlers
    stop_while_starting("train.py")

import contextlib
import json
import logging
import math
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import hydra
from omegaconf import DictConfig, OmegaConf

from utils.cli import FULL_ERROR, is_user_error
from utils.config import ConfigError, check_config, plain
from utils.rundir import discard_run_dir, register_resolvers

log = logging.getLogger("train")
register_resolvers()

# How far the run got: what a failure or a signal has to report, and whether the run dir holds anything.
_phase = {"name": "start", "run_dir": None, "fresh": True}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; returns the best value of the task's monitored metric (what sweeps optimize)."""
    from utils.resume_target import find_resume_target

    resuming = cfg.get("resume") and find_resume_target(cfg.resume, cfg.paths.output_root)
    _phase.update(name="start", run_dir=None, fresh=not resuming)
    try:
        return train(cfg)
    except Interrupted as stopped:
        exit_code = _stopped_by(stopped)
    except SystemExit as stop:  # a stop inside the loop: train() saved last.pt and chose 130 or 143
        exit_code = stop.code
    except Exception as err:
        if stopped := interruption(err):  # a signal inside a library's cleanup: that library's error
            exit_code = _stopped_by(stopped)
        elif FULL_ERROR or not is_user_error(err):
            raise
        else:  # a problem the user can fix: one line, not a traceback (HYDRA_FULL_ERROR=1 shows it)
            log.error("%s", one_line(err))
            exit_code = 2
    if _phase["name"] == "start" and _phase["fresh"]:
        discard_run_dir(_phase["run_dir"])  # a rejected run leaves no directory behind
    sys.exit(exit_code)


def _stopped_by(stopped: Interrupted) -> int:
    if _phase["name"] == "test":
        kept = "during the final test: the test was skipped; checkpoints/ holds best.pt and last.pt."
    else:
        kept = "before training started: nothing to save."
    log.warning("Stopped by %s %s", stopped.name, kept)
    return stopped.exit_code


def one_line(err: Exception) -> str:
    """OmegaConf's errors span several lines (message, full_key, object_type); keep message and key."""
    key = getattr(err, "full_key", None)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{first} (config key: {key})" if key and key not in first else first


def train(cfg: DictConfig) -> float:
    # torch is imported here, not at the top, so `train.py --help` and tab completion stay instant.
    from hydra.core.hydra_config import HydraConfig

    from utils.rundir import requeued_slurm_task
    from utils.runlock import RunLock

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    _phase["run_dir"] = run_dir
    requeued = (
        not cfg.get("resume") and requeued_slurm_task() and (run_dir / "checkpoints" / "last.pt").is_file()
    )
    if requeued:  # SLURM started this job again (preemption, time limit): it goes on from its last.pt
        cfg.resume = str(run_dir)
        _phase["fresh"] = False
    # `resume=`: continue that run from a checkpoint, with the config it was started with.
    resumed = None
    if cfg.get("resume"):
        from utils.resume import load_resume

        resumed = load_resume(cfg, HydraConfig.get(), requeued)
        cfg = resumed.cfg
        log.info("Resuming from %s (step %d)", resumed.path, resumed.state["step"])
    check_config(cfg)
    from utils.rundir import process_rank

    # One process trains in a run directory at a time (a second resume of it is refused).
    try:
        with RunLock(run_dir) if process_rank() == 0 else contextlib.nullcontext():
            run = set_up(cfg, run_dir, resumed)
            best = fit(run)
            return test_and_report(run, best)
    except BaseException as ended:
        # SLURM's warning before a time limit or preemption (SIGUSR1): last.pt is saved and the lock is
        # released; the job asks to be queued again, and the same command then continues this run.
        signum = getattr(interruption(ended), "signum", None)
        if signum == signal.SIGUSR1 or getattr(ended, "code", None) == 138:
            from utils.slurm import requeue

            if process_rank() == 0:
                requeue(log)
        raise


def set_up(cfg: DictConfig, run_dir: Path, resumed) -> SimpleNamespace:
    """Seed, device, task, data, model, optimizer, schedule, checks on one real batch, TensorBoard."""
    import torch

    from utils.dashboards import log_run_start, metric_tags
    from utils.distributed import init_distributed, wrap_ddp
    from utils.earlystop import EarlyStopping
    from utils.loaders import build_dataloaders
    from utils.resume import Position, check_can_resume
    from utils.runtime import autocast, fused_on_cuda, grad_scaler, seed_everything
    from utils.tensorboard import open_writer, unwrap
    from utils.timebudget import Deadline, parse_max_time

    tcfg, lcfg = plain(cfg.trainer), plain(cfg.logging)
    log.info("Run directory: %s", run_dir)
    log.info("TensorBoard:   tensorboard --logdir %s", shlex.quote(str(run_dir / "tb")))
    # Under torchrun (or several SLURM tasks) join the process group; run plainly, world_size is 1.
    ddp = init_distributed(tcfg.device)
    device = ddp.device
    # A random stream per rank (dropout, augmentation); DDP hands every rank rank 0's initial weights.
    seed_everything(tcfg.seed + ddp.rank, tcfg.deterministic)
    torch.backends.cudnn.benchmark = tcfg.cudnn_benchmark and not tcfg.deterministic

    check_declared(cfg)
    task = build("task", cfg.task)
    splits = build("data", cfg.data.dataset)
    if tcfg.overfit_batches:  # debug=overfit: the same first batches every epoch, validated on themselves
        from utils.overfit import overfit_splits

        splits, note = overfit_splits(splits, tcfg.overfit_batches * cfg.data.batch_size * ddp.world_size)
        log.info("%s", note)
    loaders = build_dataloaders(
        splits,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        seed=tcfg.seed,
        pin_memory=device.type == "cuda",
        # Each rank its own shard: data.batch_size is per rank, the global batch world_size times that.
        rank=ddp.rank,
        world_size=ddp.world_size,
        device=device,  # in-memory data is gathered on the GPU, when there is one
    )
    if tcfg.overfit_batches:
        from utils.overfit import same_batches_every_epoch

        same_batches_every_epoch(loaders.train)
    plan = Plan.of(len(loaders.train), tcfg)
    if tcfg.val_every_n_steps and tcfg.val_every_n_steps > plan.total_steps:
        raise ConfigError(
            f"trainer.val_every_n_steps={tcfg.val_every_n_steps} is more than the run's {plan.total_steps} steps"
        )
    log.info(
        "Data: %d train / %d val / %d test samples; %d optimizer steps over %d epochs",
        *(len(s) for s in (splits.train, splits.val, splits.test)),
        plan.total_steps,
        plan.max_epochs,
    )
    model = build("model", cfg.model).to(device)
    # One real batch through model and task: lazy modules take their shapes, and a task that does not fit
    # the data or the model stops here in one line, before any optimizer, DDP or graph sees the model.
    check_fit(cfg, task, model, splits, loaders.val, device)
    if cfg.get("init_from") and not resumed:  # fine-tuning: these weights, a new run
        from utils.init_from import load_initial_weights, log_summary

        log_summary(load_initial_weights(model, cfg.init_from, cfg.init_strict), log)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log.info(
        "Model: %s, %.2fM parameters", type(model).__name__, sum(p.numel() for p in model.parameters()) / 1e6
    )
    optimizer = build("optimizer", fused_on_cuda(cfg.optimizer, device), model.parameters())
    scheduler = build("scheduler", cfg.scheduler, optimizer, total_steps=plan.total_steps)
    scaler = grad_scaler(device, tcfg.precision)
    # Compile after the graph source is kept: log_graph_once traces the original module, not the compiled one.
    eval_model = torch.compile(model) if tcfg.compile else model
    # Evaluation runs outside DDP (each rank on its shard, metrics summed): a DDP forward syncs buffers.
    train_model = wrap_ddp(eval_model, ddp)
    # A resumed run takes back every state it saved (weights, optimizer, schedule, scaler, RNG streams) and
    # the position it reached; a new one starts at zero.
    start = Position()
    if resumed:
        check_can_resume(resumed, loaders.train, plan.total_steps, run_dir)
        start = resumed.restore(unwrap(model), optimizer, scheduler, scaler)
        check_schedule_length(scheduler, plan.total_steps)
    es = tcfg.early_stopping
    early = EarlyStopping(es["patience"], es["min_delta"], task.mode, monitor=f"val/{task.monitor}")
    early.load_state_dict(resumed.state.get("early_stopping") if resumed else None)
    # The budget is this process's: a resumed (or requeued) run gets it anew.
    deadline = Deadline(parse_max_time(tcfg.max_time))
    torch.autograd.set_detect_anomaly(tcfg.detect_anomaly)
    reference = task.reference(splits)
    # Rank 0 alone writes TensorBoard, checkpoints and metrics.json; elsewhere the writer is None.
    # Resumed: hide the events that the interrupted run wrote after its checkpoint, so no step shows twice.
    writer = open_writer(run_dir / "tb", enabled=ddp.is_main, purge_step=start.step + 1 if resumed else None)
    tags, final_tags = metric_tags(task)
    if not resumed:  # the interrupted run wrote these already, and env.json describes where it started
        log_run_start(writer, cfg, run_dir, device, tags)
        for name, value in reference.items():
            if writer:
                writer.add_scalar(f"reference/{name}", value, 0)
    return SimpleNamespace(
        cfg=cfg, tcfg=tcfg, lcfg=lcfg, run_dir=run_dir, ckpt_dir=run_dir / "checkpoints", ddp=ddp,
        device=device, task=task, loaders=loaders, plan=plan, model=model, eval_model=eval_model,
        train_model=train_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, start=start,
        reference=reference, writer=writer, final_tags=final_tags, last_good=None, early=early,
        deadline=deadline, tags=list(cfg.get("tags") or []),
        # Made once, entered every step: the precision's autocast (a reusable context; a no-op at 32-bit).
        autocast=autocast(device, tcfg.precision), move_batches=device.type != "cpu" or tcfg.channels_last,
    )  # fmt: skip


@dataclass
class Plan:
    """How long the run is: batches per epoch, optimizer steps per epoch and in all, epochs."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    max_epochs: int

    @classmethod
    def of(cls, num_batches: int, tcfg) -> Plan:
        batches = min(num_batches, tcfg.limit_batches or math.inf)
        steps_per_epoch = math.ceil(batches / tcfg.accumulate_grad_batches)
        total = tcfg.max_steps or tcfg.max_epochs * steps_per_epoch
        return cls(batches, steps_per_epoch, total, math.ceil(total / steps_per_epoch))


def check_declared(cfg: DictConfig) -> None:
    """What the task, data and model configs declare they take and give must pair up (where they declare
    it: a forker's config may leave it out, and the check on a real batch below still runs)."""
    task, data, model = cfg.task, cfg.data, cfg.model
    names = f"task={_choice('task', cfg)} data={_choice('data', cfg)} model={_choice('model', cfg)}"
    if "target" in task and task.target != data.target:
        raise ConfigError(
            f"{names}: the task reads {task.target} targets, the data has {data.target} targets"
        )
    if "input" in model and data.input not in model.input:
        raise ConfigError(
            f"{names}: the model takes {'/'.join(model.input)} input, the data gives {data.input}"
        )
    if "output" in model and "output" in task and model.output != task.output:
        raise ConfigError(
            f"{names}: the task needs {task.output} outputs, the model gives {model.output} outputs"
        )


def check_fit(cfg, task, model, splits, loader, device) -> None:
    """The task against one real batch and the model's output on it; the in-memory targets as a whole."""
    import torch

    from tasks.base import TaskError
    from utils.runtime import slice_batch, to_device

    names = f"task={_choice('task', cfg)} data={_choice('data', cfg)} model={_choice('model', cfg)}"
    try:
        tensors = getattr(splits.train, "tensors", None)
        if tensors is not None and len(tensors) > 1:
            task.check_targets(tensors[-1])
        batch = to_device(slice_batch(next(iter(loader)), 2), device)
        flags = [(m, m.training) for m in model.modules()]
        model.eval()  # no BatchNorm statistics change, no dropout drawn from the training stream
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                output = task.forward(model, batch)
        finally:
            for module, training in flags:
                module.training = training
        task.check(output, batch)
    except TaskError as err:
        raise ConfigError(f"{names}: {err}") from None
    except (RuntimeError, ValueError, TypeError, IndexError) as err:  # the model itself cannot take the batch
        raise ConfigError(
            f"{names}: the model fails on a batch of the data: {type(err).__name__}: {one_line(err)}"
        ) from None


def check_schedule_length(scheduler, total_steps: int) -> None:
    """A schedule that stores its own length (OneCycleLR) cannot be stretched by a resume with more steps."""
    stored = getattr(scheduler, "total_steps", None)
    if stored is not None and stored != total_steps:
        raise ConfigError(
            f"the schedule {type(scheduler).__name__} was built for {stored} steps and cannot be resumed for "
            f"{total_steps}; resume with the run's own length"
        )


def fit(run) -> float | None:
    """The loop: train, validate (at epoch ends, and every val_every_n_steps), keep best.pt and last.pt,
    until the run's length, early stopping, max_time or a signal ends it. Returns the best monitored value."""
    from utils.nonfinite import LossWindow
    from utils.profiling import build_profiler
    from utils.progress import Progress
    from utils.signals import StopSignals

    t, lc, start, plan = run.tcfg, run.lcfg, run.start, run.plan
    run.step, run.best, run.val, run.skipped = start.step, start.best, start.val, start.nonfinite_skipped
    # Losses stay on the device; they are read (the loop's one sync) only every logging.every_n_steps.
    run.losses = LossWindow(lc.every_n_steps * t.accumulate_grad_batches, run.device, state=start.window)
    meter = Throughput(run.task.unit)
    progress = Progress(lc.progress_bar, plan.total_steps)
    profiler = build_profiler(t.profile_steps, run.run_dir, run.device, log, run.ddp.rank)
    stop = StopSignals()  # Ctrl-C, SIGTERM, SIGUSR1: finish the step, save last.pt, exit 130 / 143 / 138
    run.stop_reason = None  # "signal", "max_time" or "early_stopping"
    _phase["name"] = "train"
    run.train_model.train()
    epoch, resume_at = start.epoch - 1, (start.epoch, start.batch)
    # debug=anomaly: torch reports where the NaN's forward call was as a warning; it goes into the error line.
    caught = _anomaly_warnings(t.detect_anomaly)
    try:
        for epoch in range(start.epoch, plan.max_epochs):
            first = start.batch if epoch == start.epoch else 0  # a resumed run goes on mid-epoch
            run.loaders.train.set_epoch(epoch, first)
            resume_at = (
                epoch + 1,
                0,
            )  # where last.pt says to go on: the next epoch, unless we stop mid-epoch
            for i, batch in enumerate(run.loaders.train, start=first):
                if i >= plan.batches_per_epoch:
                    break
                if not train_batch(run, batch, i, meter):
                    continue
                profiler.step()
                progress.advance()
                synced = run.step % lc.every_n_steps == 0 or run.step == plan.total_steps
                if synced:
                    report(run, meter, progress, epoch)
                epoch_done = i + 1 >= plan.batches_per_epoch or run.step >= plan.total_steps
                if t.val_every_n_steps and run.step % t.val_every_n_steps == 0 and not epoch_done:
                    with meter.paused():
                        validate_and_save(run, (epoch, i + 1))
                if t.checkpoint_every_n_steps and run.step % t.checkpoint_every_n_steps == 0:
                    save_step_checkpoint(run, epoch, i + 1)
                run.stop_reason = run.stop_reason or stop_requested(run, stop, synced)
                if run.stop_reason or run.step >= plan.total_steps:
                    if i + 1 < plan.batches_per_epoch:
                        resume_at = (epoch, i + 1)  # last.pt goes on with this epoch's next batch
                    break
            if run.stop_reason and resume_at[0] == epoch:
                break  # stopped mid-epoch: validated already, or not due; last.pt is saved below
            with meter.paused():  # validation and checkpoints are kept out of the throughput
                end_epoch(run, epoch, resume_at)
            if run.step >= plan.total_steps or run.stop_reason:
                break
    except RuntimeError as err:
        if t.detect_anomaly and "nan" in str(err).lower():
            from utils.nonfinite import NonFiniteLossError

            where = anomaly_origin(caught)
            what = one_line(err).rstrip(".")
            raise NonFiniteLossError(f"anomaly detection at step {run.step + 1}: {what}{where}") from None
        raise
    finally:
        for line in profiler.finish():
            log.info("%s", line)
        caught.stop()
    progress.close()
    run.epoch, run.throughput = epoch, meter.summary()
    stop.restore()
    return finish_stop(run, stop, resume_at)


class _anomaly_warnings(list):
    """The warnings of an anomaly-mode run, held back (others are passed on at the end)."""

    def __init__(self, enabled: bool) -> None:
        import warnings

        super().__init__()
        self._context = warnings.catch_warnings(record=True) if enabled else None
        if self._context is not None:
            self.extend_from = self._context.__enter__()
            warnings.simplefilter("always")

    def stop(self) -> None:
        import warnings

        if self._context is not None:
            self.extend(self.extend_from)
            self._context.__exit__(None, None, None)
            self._context = None
            for w in self:
                if "Error detected in" not in str(w.message):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def anomaly_origin(caught) -> str:
    """`; forward call at tasks/x.py:23` from torch's anomaly warning: the project's innermost frame."""
    import re

    caught.stop()
    for w in caught:
        text = str(w.message)
        if "Error detected in" in text:
            frames = re.findall(r'File "([^"]+)", line (\d+)', text)
            root = str(Path(__file__).parent) + "/"
            own = [
                (f.replace(root, ""), n) for f, n in frames if f.startswith(root) and "-packages/" not in f
            ]
            if own:
                return f"; the forward call that made it: {own[-1][0]}:{own[-1][1]}"
    return ""


def stop_requested(run, stop, synced: bool) -> str | None:
    """A signal or the time budget ends the loop after this step. Under DDP every rank must leave at the
    same step, so the ranks agree on it, at the steps where the loop syncs anyway."""
    if stop.agreed(synced, run.device):
        return "signal"
    if not run.deadline.enabled:
        return None
    from utils.distributed import any_rank

    due = synced or not stop.distributed
    return "max_time" if due and any_rank(run.deadline.expired(), run.device) else None


def finish_stop(run, stop, resume_at: tuple[int, int]) -> float | None:
    """After the loop: a signal saves last.pt and exits (130, 143; 138 for SLURM's SIGUSR1, which requeues);
    max_time saves last.pt and goes on to the test, as early stopping does."""
    from utils.resume import resume_command

    if run.stop_reason in ("signal", "max_time") and run.ddp.is_main:
        save(run, "last.pt", *resume_at)
    if run.stop_reason == "signal":
        if run.ddp.is_main:
            run.writer.close()
        how = "; requeueing" if stop.name == "SIGUSR1" else ""
        log.warning(
            "Stopped by %s at step %d%s. Resume with: %s",
            stop.name,
            run.step,
            how,
            resume_command(run.run_dir),
        )
        sys.exit(stop.exit_code)
    if run.stop_reason == "max_time":
        log.warning(
            "trainer.max_time=%s reached at step %d (%s); last.pt saved, testing %s. Continue with: %s",
            run.tcfg.max_time, run.step, run.deadline.describe(),
            "best.pt" if run.best is not None else "the current weights (no validation yet)",
            resume_command(run.run_dir),
        )  # fmt: skip
    if run.stop_reason == "early_stopping":
        log.info("Stopped early at epoch %d step %d: %s", run.epoch, run.step, run.early.describe())
    return run.best


def train_batch(run, batch, i: int, meter) -> bool:
    """Forward, backward and, on the last micro-batch of an accumulation, the optimizer step.
    Returns whether an optimizer step was taken."""
    # This runs every step: what it needs is made once in set_up, and imported only in the branches that
    # use it (a 1 ms CPU step notices a few microseconds of bookkeeping).
    t, task = run.tcfg, run.task
    if run.move_batches:  # on the CPU, without channels_last, a batch is where it belongs already
        from utils.runtime import to_device

        batch = to_device(batch, run.device, t.channels_last)
    if run.step == 0 and i == 0 and run.writer:
        from utils.dashboards import log_input_images
        from utils.tensorboard import log_graph_once

        if run.lcfg.graph:
            log_graph_once(run.writer, run.model, task.example_input(batch))
        if run.lcfg.images and (images := task.images(batch)) is not None:
            log_input_images(run.writer, images, run.cfg.data, run.step)
    accum = t.accumulate_grad_batches
    update = accum == 1 or (i + 1) % accum == 0 or i + 1 == run.plan.batches_per_epoch
    if update:
        loss, output = forward_backward(run, batch, accum)
    else:  # DDP averages gradients over ranks in backward; not on batches that only accumulate them
        from utils.distributed import sync_gradients

        with sync_gradients(run.train_model, update):
            loss, output = forward_backward(run, batch, accum)
    if loss is None:
        return False  # a non-finite loss, skipped
    run.losses.add(loss, run.step + 1)
    meter.count(task.count(batch) * run.ddp.world_size)  # over all ranks: each runs batches of one size
    if not update:
        return False  # accumulate gradients: no optimizer step on this batch
    if (run.step + 1) % run.lcfg.every_n_steps == 0 or run.step + 1 == run.plan.total_steps:
        run.train_sample = (output.detach(), batch)  # the batch whose metrics the log line shows
    if t.grad_clip:
        import torch

        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.lcfg.histograms_every_n_epochs:  # histograms read the gradients before zero_grad
        from utils.dashboards import histograms_due, log_histograms

        if histograms_due(run.lcfg.histograms_every_n_epochs, run.step + 1, run.plan.steps_per_epoch):
            log_histograms(run.writer, run.model, run.step + 1)
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.step += 1
    return True


def forward_backward(run, batch, accum: int):
    """The task's loss on this batch, backpropagated (scaled for fp16, divided over an accumulation);
    (None, None) if trainer.skip_nonfinite drops the batch."""
    with run.autocast:
        output = run.task.forward(run.train_model, batch)
        loss = run.task.loss(output, batch)
    if run.tcfg.skip_nonfinite:
        from utils.nonfinite import drop_nonfinite

        if drop_nonfinite(loss):
            # Drop this batch, with the batches it was accumulating with.
            run.skipped += 1
            run.optimizer.zero_grad(set_to_none=True)
            return None, None
    run.scaler.scale(loss / accum if accum > 1 else loss).backward()
    return loss, output


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

    def paused(self):
        import contextlib

        @contextlib.contextmanager
        def pause():
            began = time.perf_counter()
            yield
            self.start += time.perf_counter() - began

        return pause()

    def summary(self) -> dict:
        """Every window but the first, which holds the one-off costs (allocator warm-up, cudnn autotuning,
        torch.compile, starting workers); `make bench` reads it."""
        steady = self.windows[1:] or self.windows
        return {
            "train_seconds": sum(s for _, s in self.windows),
            self.key: sum(n for n, _ in steady) / max(sum(s for _, s in steady), 1e-9),
        }


def report(run, meter, progress, epoch: int) -> None:
    """The loop's one sync point: reading the losses makes the device catch up. Under DDP they are averaged
    over ranks, and a non-finite one stops every rank alike."""
    from utils.dashboards import log_lr_per_group
    from utils.tensorboard import add_scalars

    values = {"loss": run.losses.read(run.last_good, run.writer), "lr": run.scheduler.get_last_lr()[0]}
    values[meter.key] = meter.close_window()
    values.update(train_metrics(run))
    if run.writer:
        add_scalars(run.writer, values, run.step, "train")
    if run.lcfg.lr_per_group:
        log_lr_per_group(run.writer, run.optimizer, run.step)
    progress.report(run.step, epoch, values)
    run.losses.reset()


def train_metrics(run) -> dict:
    """The task's metrics (train/acc, ...) on the last training batch of the logging window: read at the
    loop's sync point, so they cost no extra sync per step. The loss is the window's mean, above."""
    from utils.distributed import all_reduce_sum

    sample, run.train_sample = getattr(run, "train_sample", None), None
    if sample is None:
        return {}
    output, batch = sample  # detached: no graph is built
    sums = run.task.init_sums(run.device)
    run.task.update(sums, output, batch)
    keys = sorted(sums)
    sums = dict(zip(keys, all_reduce_sum(*(sums[k] for k in keys)), strict=True))
    return {k: v for k, v in run.task.compute(sums).items() if k != "loss"}


def end_epoch(run, epoch: int, resume_at: tuple[int, int]) -> None:
    """Validate when due (every val_every_n_epochs, and at the last epoch); last.pt always."""
    last_epoch = epoch + 1 == run.plan.max_epochs or run.step >= run.plan.total_steps
    if (epoch + 1) % run.tcfg.val_every_n_epochs == 0 or last_epoch:
        validate_and_save(run, resume_at, epoch)
    elif run.ddp.is_main:
        save(run, "last.pt", *resume_at)


def validate_and_save(run, resume_at: tuple[int, int], epoch: int | None = None) -> None:
    """One validation: best.pt when the monitored metric improved, last.pt always, early stopping told."""
    from utils.checkpoint import link_checkpoint

    run.val = validate(run, run.step)
    where = f"epoch {epoch} step {run.step}" if epoch is not None else f"step {run.step}"
    log.info("%s: %s", where, " ".join(f"val {k} {v:.4f}" for k, v in run.val.items()))
    value = run.val[run.task.monitor]
    improved = run.task.better(value, run.best)  # val is summed over ranks: all ranks agree
    run.best = value if improved else run.best
    if run.early.update(value, run.step):
        run.stop_reason = run.stop_reason or "early_stopping"
    if not run.ddp.is_main:
        return
    if improved:
        # best.pt first: a kill before last.pt follows only repeats this epoch. Then last.pt, the same
        # state, as a second name of that file: one write per validation, not two.
        link_checkpoint(save(run, "best.pt", *resume_at), run.ckpt_dir / "last.pt")
    else:
        save(run, "last.pt", *resume_at)


def validate(run, step: int, split: str = "val") -> dict:
    """The task's metrics on a split, to TensorBoard as <split>/<metric>, with the task's own pictures."""
    import torch

    from utils.tensorboard import add_scalars

    loader = getattr(run.loaders, split)
    limit = run.tcfg.limit_val_batches if split == "val" else run.tcfg.limit_test_batches
    metrics, sums, first = evaluate_split(run, loader, limit)
    if run.writer:
        add_scalars(run.writer, metrics, step, split)
        if split == "val" and first is not None:
            was_training = run.model.training
            run.model.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                run.task.log_pictures(run.writer, sums, run.model, first, step, split)
            run.model.train(was_training)
    return metrics


def evaluate_split(run, loader, limit=None):
    from utils.evaluation import evaluate

    t = run.tcfg
    return evaluate(run.eval_model, loader, run.task, run.device, t.precision, t.channels_last, limit)


def checkpoint_state(run, epoch: int, batch: int) -> dict:
    """Everything a resume needs to go on exactly, as tensors and plain containers (weights_only)."""
    from utils.checkpoint import rng_state
    from utils.resume import data_order_state
    from utils.tensorboard import unwrap

    return {
        "model": unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,
        "batch_in_epoch": batch,  # batches of `epoch` already trained on
        "step": run.step,
        "monitor": run.task.monitor,
        "mode": run.task.mode,
        "best": run.best,
        "val_last": run.val,
        "rng": rng_state(),
        "data_order": data_order_state(run.loaders.train, epoch, batch),
        "window": run.losses.state(),  # the losses that the next log line averages
        "nonfinite_skipped": run.skipped,
        "early_stopping": run.early.state_dict(),
        "config": OmegaConf.to_container(run.cfg, resolve=True),
    }


def save(run, name: str, epoch: int, batch: int = 0) -> Path:
    """Every checkpoint goes through here: never one of weights that a non-finite loss has spoiled, and
    TensorBoard flushed first, so that a resumed run finds every event up to this step on disk."""
    from utils.checkpoint import save_checkpoint

    run.losses.check(run.last_good, run.writer)
    run.writer.flush()
    save_checkpoint(checkpoint_state(run, epoch, batch), run.ckpt_dir / name)
    run.last_good = run.ckpt_dir / name
    return run.last_good


def save_step_checkpoint(run, epoch: int, batch: int) -> None:
    """last.pt, then step_<N>.pt as a second name of it: once that exists, last.pt is as new."""
    from utils.checkpoint import link_checkpoint, prune_step_checkpoints

    if run.ddp.is_main:
        link_checkpoint(save(run, "last.pt", epoch, batch), run.ckpt_dir / f"step_{run.step:08d}.pt")
        prune_step_checkpoints(run.ckpt_dir, run.tcfg.keep_step_checkpoints)


def test_and_report(run, best: float | None) -> float | None:
    """Test the best weights; write metrics.json and the HPARAMS row's final values."""
    from utils.checkpoint import load_checkpoint
    from utils.dashboards import log_run_end
    from utils.distributed import barrier, check_weights_in_sync
    from utils.tensorboard import unwrap

    check_weights_in_sync(run.model, run.ddp)  # under DDP: every rank logs a digest of its weights
    _phase["name"] = "test"
    barrier()  # rank 0 has written best.pt; now the other ranks may read it
    best_path = run.ckpt_dir / "best.pt"
    if best_path.exists():
        unwrap(run.model).load_state_dict(load_checkpoint(best_path, map_location=run.device)["model"])
    log.info("Testing %s on the test split", best_path.name if best_path.exists() else "the last weights")
    test = validate(run, run.step, "test")
    task = run.task
    metrics = {
        "monitor": f"val/{task.monitor}",
        "mode": task.mode,
        **{f"test/{k}": v for k, v in test.items()},
        f"val/{task.monitor}_best": best,
        **{f"val/{k}_last": v for k, v in (run.val or {}).items()},
        **{f"reference/{k}": v for k, v in run.reference.items()},
        "epochs": run.epoch + 1,
        "steps": run.step,
        "nonfinite_batches_skipped": run.skipped,
        "stopped_by": run.stop_reason,  # null: the run's full length
        "stopped_early": run.stop_reason == "early_stopping",
        **run.throughput,
        "tags": run.tags,
    }
    log_run_end(run.writer, metrics, run.step, run.final_tags)  # the HPARAMS session ends
    if run.ddp.is_main:
        run.writer.close()
        (run.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(test.items(), key=lambda kv: kv[0] != task.monitor))
    best_text = "none" if best is None else f"{best:.4f}"
    log.info(
        "Test: %s (best val %s %s). Metrics: %s", shown, task.monitor, best_text, run.run_dir / "metrics.json"
    )
    _phase["name"] = "done"
    return best


# Keys of a group's config that say what it takes and gives (the tests pair task, data and model by
# them); they are not parameters of what the group builds.
DECLARATIONS = {"model": ("input", "output"), "task": ("target", "output")}


def build(group: str, node: DictConfig, *args, **kwargs):
    """instantiate(node), then call the result with args for `_partial_` configs (the optimizer gets the
    parameters, the schedule the optimizer). A bad value fails in one line that names the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from data.splits import DatasetError
    from tasks.base import TaskError
    from utils.trust import literal

    if group in DECLARATIONS:
        kept = {
            k: v
            for k, v in OmegaConf.to_container(node, resolve=True).items()
            if k not in DECLARATIONS[group]
        }
        node = OmegaConf.create(literal(kept))  # resolved values stay values: no `${` comes alive again
    try:
        obj = instantiate(node)
        return obj(*args, **kwargs) if args or kwargs else obj
    except (DatasetError, TaskError):
        raise
    except (InstantiationException, TypeError, ValueError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if isinstance(cause, (DatasetError, TaskError)):
            raise cause from None
        target = node.get("_target_", "?")
        raise ConfigError(
            f"could not build {group} ({target}): {type(cause).__name__}: {one_line(cause)}"
        ) from None


def _choice(group: str, cfg) -> str:
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return str(choices.get(group) or OmegaConf.select(cfg, f"{group}._target_", default="?"))


if __name__ == "__main__":
    from utils.cli import run

    run(main, "train.py", "train")
