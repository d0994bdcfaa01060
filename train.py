"""Train a model on a task, both chosen by Hydra config, with a plain PyTorch loop.

    python train.py                                     # classification: mlp on scikit-learn's digits
    python train.py model=resnet18 logging.graph=true   # the graph shows in TensorBoard's GRAPHS tab
    python train.py experiment=<name>                   # a saved experiment (conf/experiment/)

The story, top to bottom: `train` sets the run up (its parts, built once, and its state, which changes and
is checkpointed: loop/state.py), `fit` runs the epochs, `train_on_batch` takes one batch of them (what
`make bench` times), `step` is one optimizer step, `validate_and_save` keeps best.pt and last.pt, and
`test` tests the best weights and writes metrics.json. The task (tasks/) owns the loss, the metrics and
the pictures; this file names none of them. A run's life around the loop (signals, the run lock, one-line
errors, exit codes, SLURM's requeue) is life/run.py. docs/loop.md shows how to change the loop: an
EMA of the weights, a second optimizer, a new checkpointed field.
"""

from __future__ import annotations

# First, before anything slow: Ctrl-C or SIGTERM from here on ends in one line, never a traceback.
from system.signals import stop_while_starting  # isort: skip

if __name__ == "__main__":  # the tests import this file to train in-process
    stop_while_starting("train.py")

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from life import cli
from life.run import RunLife
from store import rundir

log = logging.getLogger("train")
rundir.register_resolvers()


@dataclass
class Outcome:
    best: float | None  # the best value of the task's monitored metric (what a sweep optimizes)
    signal: int | None = None  # the signal that stopped the run, which then exits 128 + its number


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra's entry point; returns the best monitored value (what sweeps optimize)."""
    with RunLife("train.py", log) as life:
        outcome = train(cfg, life)
        life.stopped_by(outcome.signal)
    if life.exit_code:
        sys.exit(life.exit_code)
    return outcome.best


if __name__ == "__main__" and cli.answers_at_once(sys.argv):  # --help, --cfg job, tab completion: no torch
    sys.exit(cli.run(main, "train.py", "train"))

# The loop's imports, below Hydra's quick answers above, which need none of them.
import torch
from torch.nn.utils import clip_grad_norm_

# `schema`, not `setup.config`: a function naming both `config` and `distributed` would make cloudpickle
# (submitit's launcher pickles `main`) take torch.distributed.config along, which cannot be pickled.
import setup.config as schema
import setup.distributed
import setup.parts
import setup.pretrained
import setup.runtime
import setup.sharding
from board import dashboards, writer
from loop import evaluation, freeze, nonfinite
from loop.session import Session
from loop.state import Parts, Plan, TrainState
from loop.timebudget import Deadline
from store import checkpoint, init_from, resume
from system import files
from system.layout import RunDir


def train(cfg: DictConfig, life: RunLife) -> Outcome:
    """Set up, train, test: the whole run, in the directory Hydra made for it."""
    run_dir, cfg = life.open_run_dir(cfg)
    resumed = None
    if cfg.get("resume"):  # continue that run from a checkpoint, with the config it was started with
        resumed = resume.load_resume(cfg, HydraConfig.get(), requeued=life.requeued)
        cfg = resume.keep_global_batch(resumed, setup.distributed.world_size())
    schema.check_config(cfg)
    life.lock()  # one process trains in a run directory at a time
    parts, state = set_up(cfg, run_dir)
    if resumed:  # every saved state comes back: weights, optimizer, schedule, RNG streams, position
        resume.check_can_resume(resumed, parts.loaders.train, parts.plan.total_steps, run_dir)
        checkpoint.restore(parts, state, resumed.checkpoint)
        log.info("Resuming from %s (step %d)", resumed.checkpoint.path, state.step)
    # TensorBoard's writer, open to the run's end: RunLife closes it, however the run ends.
    parts.writer = life.hold(dashboards.run_writer(parts, state.step if resumed else None))
    # From here to the end a signal stops the loop after the step in flight, the test after its batch.
    with Session(parts, state, life.stop_signals()) as session:
        life.phase = "train"
        fit(parts, state, session)
    if state.stop_reason in ("signal", "max_time"):  # last.pt goes on from here, after the test or not
        save(parts, state, RunDir(run_dir).last)
    if session.tell_stop(resume.resume_command(run_dir)) == "signal":
        return Outcome(state.best, session.signals.signum)
    life.phase = "test"
    if not test(parts, state, session):
        log.warning("Stopped by %s during the final test: the test was skipped; checkpoints/ holds best.pt "
                    "and last.pt. Test them with: %s", session.signals.name,
                    resume.resume_command(run_dir))  # fmt: skip
        return Outcome(state.best, session.signals.signum)
    life.phase = "done"
    return Outcome(state.best)


def set_up(cfg: DictConfig, run_dir) -> tuple[Parts, TrainState]:
    """Seed, device, data, task, model, optimizer and schedule, checked together on one real batch; the
    state a new run starts from. Nothing is logged until every check has passed."""
    t, lg = schema.typed(cfg.trainer, schema.TrainerSchema), schema.typed(cfg.logging, schema.LoggingSchema)
    # Under torchrun (or several SLURM tasks) its place in the group; world_size 1 plainly.
    ddp = setup.distributed.init_distributed(t.device)
    # A random stream per rank (dropout, augmentation); DDP hands every rank rank 0's initial weights.
    setup.runtime.seed_everything(t.seed + ddp.rank, t.deterministic, t.cudnn_benchmark)
    # First: what only its files know (a table's classes), and a pretrained model's normalization and image
    # size (setup/pretrained.py), reach the task, the model and the data.
    setup.pretrained.take_preprocessing(cfg, log)
    splits = setup.parts.build_data(cfg)
    task = setup.parts.build("task", cfg.task)
    # Each rank its own shard: data.batch_size is per rank, the global batch world_size times that.
    splits, loaders, note = setup.parts.build_loaders(
        cfg, splits, ddp.device, ddp.rank, ddp.world_size, t.overfit_batches
    )
    plan = Plan.of(len(loaders.train), t)
    if t.val_every_n_steps and t.val_every_n_steps > plan.total_steps:
        raise schema.ConfigError(
            f"trainer.val_every_n_steps={t.val_every_n_steps} is more than the run's {plan.total_steps} steps"
        )
    model = setup.parts.build_model(cfg).to(ddp.device)
    setup.parts.check_fit(cfg, task, model, splits, loaders.val, ddp.device)  # one real batch, first
    if cfg.get("init_from") and not cfg.get("resume"):  # fine-tuning: these weights, a new run
        loaded = init_from.load_initial_weights(
            model, cfg.init_from, cfg.init_strict, cfg.get("init_from_map")
        )
        init_from.log_summary(loaded, log)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # trainer.strategy=fsdp shards it in place (before the optimizer, which then holds the shards);
    # trainer.activation_checkpointing recomputes its blocks' activations.
    model = setup.sharding.prepare(model, t.strategy, t.activation_checkpointing, t.compile, t.precision, ddp)
    optimizer = setup.parts.build_optimizer(cfg, model, ddp.device)  # its parameter groups: optim/params.py
    scheduler = setup.parts.build("scheduler", cfg.scheduler, optimizer, total_steps=plan.total_steps)
    eval_model = setup.sharding.evaluated(model, t.compile)  # the graph traces `model`, uncompiled
    max_time = schema.parse_max_time(t.max_time)
    parts = Parts(
        cfg, t, lg, run_dir, ddp, task, loaders, plan, model, eval_model,
        # Evaluation runs outside DDP: a DDP forward syncs buffers.
        train_model=setup.distributed.wrap_ddp(eval_model, ddp),
        optimizer=optimizer, scheduler=scheduler, scaler=setup.runtime.grad_scaler(ddp.device, t.precision),
        autocast=setup.runtime.autocast(ddp.device, t.precision), deadline=Deadline(max_time),
        reference=task.reference(splits),
    )  # fmt: skip
    torch.autograd.set_detect_anomaly(t.detect_anomaly)
    graph = "" if lg.graph else "   (the model's graph: logging.graph=true)"
    log.info("Run directory: %s", run_dir)
    log.info("TensorBoard:   tensorboard --logdir %s%s", shlex.quote(str(RunDir(run_dir).tb)), graph)
    for line in filter(None, [note, *setup.parts.describe(splits, plan, model)]):
        log.info("%s", line)
    return parts, TrainState.new(parts)


def fit(parts: Parts, state: TrainState, session: Session) -> None:
    """The epochs: train, validate when due, keep best.pt and last.pt, until the run's length, early
    stopping, max_time or a signal ends it (state.stop_reason says which)."""
    plan, t, run = parts.plan, parts.trainer, RunDir(parts.run_dir)
    parts.train_model.train()
    for epoch in range(state.epoch, plan.max_epochs):
        if epoch != state.epoch:
            state.epoch, state.batch_in_epoch = epoch, 0
        parts.loaders.train.set_epoch(epoch, state.batch_in_epoch)  # a resumed run goes on mid-epoch
        if t.freeze_backbone_epochs:  # the backbone frozen for the first N epochs (loop/freeze.py)
            freeze.backbone_frozen(parts.model, epoch < t.freeze_backbone_epochs)
        for i, batch in enumerate(parts.loaders.train, start=state.batch_in_epoch):
            if i >= plan.batches_per_epoch or train_on_batch(parts, state, session, batch, i):
                break
        if state.stop_reason:
            return  # stopped within the epoch (or at its last step): last.pt goes on from here
        last = epoch + 1 == plan.max_epochs or state.step >= plan.total_steps
        with session.meter.paused():  # validation and checkpoints are kept out of the throughput
            if last or (epoch + 1) % t.val_every_n_epochs == 0:
                validate_and_save(parts, state, session)
            else:
                end_epoch(parts, state)
                save(parts, state, run.last)
        if last or state.stop_reason:
            return


def train_on_batch(parts: Parts, state: TrainState, session: Session, batch, i: int) -> bool:
    """Batch i of epoch state.epoch, as it comes from the loader: checked, moved to the device, one `step`,
    counted; after an optimizer step the bar and log line, validation and a step checkpoint when due, the
    stop check. Returns whether the epoch ends here (a stop, or the run's last step). The benchmark
    (tools/bench_paired.py) times this function, so what a fork adds here is what it measures."""
    plan, t = parts.plan, parts.trainer
    parts.task.check_batch(batch, f"training batch {i} of epoch {state.epoch}")  # still on the CPU
    if parts.move_batches:
        batch = setup.runtime.to_device(batch, parts.device, t.channels_last)
    if state.step == 0 and i == 0:  # the graph, traced at the first step, and the input images
        dashboards.log_first_batch(parts, batch)
    stepped = step(parts, state, batch, i)
    state.batch_in_epoch = i + 1
    session.meter.count(parts.task.count(batch) * parts.ddp.world_size)
    if not stepped:
        return False  # accumulating gradients, or a skipped non-finite batch
    synced = session.stepped()
    epoch_ends = i + 1 >= plan.batches_per_epoch or state.step >= plan.total_steps
    if t.val_every_n_steps and state.step % t.val_every_n_steps == 0 and not epoch_ends:
        with session.meter.paused():
            validate_and_save(parts, state, session)
    if t.checkpoint_every_n_steps and state.step % t.checkpoint_every_n_steps == 0:
        run = RunDir(parts.run_dir)
        save(parts, state, run.last, run.step_checkpoint(state.step))
    state.stop_reason = state.stop_reason or session.stop_reason(synced)
    return bool(state.stop_reason) or state.step >= plan.total_steps


def step(parts: Parts, state: TrainState, batch, i: int) -> bool:
    """One batch: forward and loss through the task, backward, and on the last micro-batch of an
    accumulation the optimizer step (non-finite check, clipping, scaler, optimizer, schedule, zero_grad).
    Returns whether the optimizer stepped."""
    t, task = parts.trainer, parts.task
    accum = t.accumulate_grad_batches
    update = accum == 1 or (i + 1) % accum == 0 or i + 1 == parts.plan.batches_per_epoch
    # DDP averages gradients only when stepping.
    with setup.distributed.sync_gradients(parts.train_model, update):
        with parts.autocast:
            output = task.forward(parts.train_model, batch)
            loss, named = nonfinite.total_loss(task.loss(output, batch))  # a dict's parts: logged one by one
        if t.skip_nonfinite and nonfinite.drop_nonfinite(loss):  # one sync per batch, asked for
            state.nonfinite_skipped += 1
            parts.optimizer.zero_grad(set_to_none=True)  # with the batches it was accumulating with
            return False
        parts.scaler.scale(loss / accum if accum > 1 else loss).backward()
    state.window.add(loss, state.step + 1, named)  # read at the next logging step: no sync here
    if not update:
        return False
    logged = (state.step + 1) % parts.logging.every_n_steps == 0 or state.step + 1 == parts.plan.total_steps
    if logged and task.train_metrics:  # the batch whose metrics the log line shows
        state.train_sample = (output, batch)
    if t.grad_clip:
        parts.scaler.unscale_(parts.optimizer)
        clip_grad_norm_(parts.model.parameters(), t.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    if state.ema is not None:  # trainer.ema_decay: the moving average follows every step
        state.ema.update_parameters(parts.model)
    if parts.logging.histograms_every_n_epochs:  # they read the gradients, before zero_grad
        dashboards.log_histograms_when_due(parts, state.step + 1)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()
    state.step += 1
    return True


def validate_and_save(parts: Parts, state: TrainState, session: Session) -> None:
    """One validation: best.pt when the monitored metric improved, last.pt always, early stopping told.
    A signal during it stops the run before it counts: last.pt then goes on from before it."""
    metrics = validate(parts, state, "val", state.step, session)
    if metrics is None:
        state.stop_reason = "signal"
        return
    log.info(
        "epoch %d step %d: %s",
        state.epoch,
        state.step,
        " ".join(f"val {k} {v:.4f}" for k, v in metrics.items()),
    )
    end_epoch(parts, state)
    state.val_last, value = metrics, metrics[parts.task.monitor]
    improved = parts.task.better(value, state.best)  # val is summed over ranks: all ranks agree
    state.best = value if improved else state.best
    if state.early_stopping.update(value, state.step):
        state.stop_reason = state.stop_reason or "early_stopping"
    # best.pt first: a kill before last.pt follows only repeats this validation. last.pt is then the same
    # file under a second name: one write per validation, not two.
    run = RunDir(parts.run_dir)
    save(parts, state, *((run.best, run.last) if improved else (run.last,)))


def end_epoch(parts: Parts, state: TrainState) -> None:
    """Once an epoch's batches are all trained on, last.pt goes on with the next epoch."""
    if state.batch_in_epoch >= parts.plan.batches_per_epoch:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0


def validate(parts: Parts, state: TrainState, split: str, step: int, session: Session | None = None):
    """The task's metrics on a split, to TensorBoard as <split>/<metric> at `step`, with the task's own
    pictures. None if a stop signal came during it."""
    t = parts.trainer
    limit = t.limit_val_batches if split == "val" else t.limit_test_batches
    model = state.evaluated_model(parts.eval_model)
    stop = session.stop_now if session else None
    done = evaluation.evaluate(model, getattr(parts.loaders, split), parts.task, parts.device, t.precision,
                    t.channels_last, limit, stop, split, train=parts.loaders.train_in_order)  # fmt: skip
    if done is None:
        return None
    numbers, metrics, first = done
    if parts.writer:
        writer.add_scalars(parts.writer, numbers, step, split)
        # A sharded model runs only with every rank: rank 0 alone cannot draw its pictures.
        if split == "val" and first is not None and not setup.sharding.is_sharded(parts.model):
            model = writer.unwrap(state.evaluated_model(parts.model))
            was_training = model.training
            model.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                parts.task.log_pictures(parts.writer, metrics, model, first, step, split)
            model.train(was_training)
    return numbers


def save(parts: Parts, state: TrainState, path: Path, *also: Path) -> None:
    """Every checkpoint goes through here (rank 0 writes): never one of weights that a non-finite loss
    has spoiled, and TensorBoard flushed first, so that a resumed run finds every event up to its step.
    `also`: second names of the same file (hard links), written after it; a step_<N>.pt prunes older ones.
    A sharded model's checkpoint is written by every rank, each its shards (store/sharded.py)."""
    if parts.ddp.is_main:
        state.window.check(state.last_good, parts.writer)
        parts.writer.flush()
    if setup.sharding.is_sharded(parts.model):
        # torch.distributed.checkpoint is imported here, by a sharded run only: a second of start-up.
        from store.sharded import save_sharded

        save_sharded(parts, state, path, *also)
        state.last_good = RunDir.sharded(path)
        return
    if not parts.ddp.is_main:
        return
    checkpoint.save_checkpoint(checkpoint.checkpoint_of(parts, state), path)
    for other in also:
        checkpoint.link_checkpoint(path, other)
    state.last_good = path
    if any(RunDir.is_step_checkpoint(other) for other in also):
        checkpoint.prune_step_checkpoints(RunDir(parts.run_dir), parts.trainer.keep_step_checkpoints)


def test(parts: Parts, state: TrainState, session: Session) -> bool:
    """Test the best weights (best.pt; the last ones if no validation ran); write metrics.json and the
    HPARAMS row's final values. False if a stop signal came during it (nothing is written then)."""
    # Under DDP every rank logs a digest of its weights.
    setup.distributed.check_weights_in_sync(parts.model, parts.ddp)
    setup.distributed.barrier()  # rank 0 has written best.pt; now the other ranks may read it
    run, tested_state = RunDir(parts.run_dir), state
    best = run.found(run.best)  # best.pt, or best.dcp in a sharded run
    if best.exists():  # its weights, and its state's (averaged weights, when a state keeps them)
        tested_state = checkpoint.restore_evaluated(parts, checkpoint.read_checkpoint(best, parts.device))
    log.info("Testing %s on the test split", best.name if best.exists() else "the last weights")
    tested = validate(parts, tested_state, "test", state.step, session)
    if tested is None:
        return False
    task = parts.task
    metrics = {
        "monitor": f"val/{task.monitor}",
        "mode": task.mode,
        **{f"test/{k}": v for k, v in tested.items()},
        f"val/{task.monitor}_best": state.best,
        **{f"val/{k}_last": v for k, v in (state.val_last or {}).items()},
        **{f"reference/{k}": v for k, v in parts.reference.items()},
        "epochs": state.epoch + (state.batch_in_epoch > 0),
        "steps": state.step,
        "nonfinite_batches_skipped": state.nonfinite_skipped,
        "stopped_by": state.stop_reason,  # null: the run's full length
        "stopped_early": state.stop_reason == "early_stopping",
        **session.meter.summary(),
        "tags": list(parts.cfg.get("tags") or []),
    }
    dashboards.log_run_end(parts.writer, metrics, state.step, dashboards.metric_tags(task)[1])  # HPARAMS row
    if parts.ddp.is_main:
        parts.writer.flush()  # every event on disk before the file that marks the run finished
        files.write_json(run.metrics, metrics)  # whole or absent: it marks a finished run
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(tested.items(), key=lambda kv: kv[0] != task.monitor))
    best_text = "none" if state.best is None else f"{state.best:.4f}"
    log.info(
        "Test: %s (best val %s %s). Metrics: %s",
        shown,
        task.monitor,
        best_text,
        run.metrics,
    )
    return True


if __name__ == "__main__":
    cli.run(main, "train.py", "train")
