"""Train a model chosen by Hydra config, with a plain PyTorch loop.

    python train.py                                     # mlp on scikit-learn's digits, offline
    python train.py model=resnet18 logging.graph=true   # the graph shows in TensorBoard's GRAPHS tab

The story: check the config, build data and model, train (validating every few epochs and keeping the
best weights), test the best weights, write metrics.json. Everything lands in the run directory that Hydra
made for this run. Helpers live in utils/, one concern per module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from utils.config import ConfigError, check_config, plain
from utils.rundir import register_resolvers

log = logging.getLogger("train")
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; returns the best validation accuracy, the metric that sweepers optimize."""
    from omegaconf.errors import OmegaConfBaseException

    from data.splits import DatasetError
    from utils.checkpoint import CheckpointError
    from utils.distributed import cleanup_distributed
    from utils.nonfinite import NonFiniteLossError

    try:
        return train(cfg)
    except (ConfigError, DatasetError, CheckpointError, NonFiniteLossError, OmegaConfBaseException) as err:
        # A problem the user can fix: one line, not a traceback. HYDRA_FULL_ERROR=1 shows the traceback.
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", one_line(err))
        exit_code = 2
    except SystemExit as stop:  # Ctrl-C or SIGTERM: train() saved last.pt and chose 130 or 143
        exit_code = stop.code
    finally:
        # Under torchrun: leave the process group, so the next multirun job can join. It runs after the
        # except clauses have dropped the exception, whose traceback would keep train()'s DDP model alive.
        cleanup_distributed()
    sys.exit(exit_code)


def one_line(err: Exception) -> str:
    """OmegaConf's errors span several lines (message, full_key, object_type); keep message and key."""
    key = getattr(err, "full_key", None)
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{first} (config key: {key})" if key and key not in first else first


def train(cfg: DictConfig) -> float:
    # torch is imported here, not at the top, so `train.py --help` and tab completion stay instant.
    import torch
    import torch.nn.functional as F
    from hydra.core.hydra_config import HydraConfig

    from utils.checkpoint import link_checkpoint, prune_step_checkpoints, rng_state, save_checkpoint
    from utils.dashboards import (
        histograms_due,
        log_histograms,
        log_input_images,
        log_lr_per_group,
        log_per_class,
        log_run_end,
        log_run_start,
    )
    from utils.distributed import (
        barrier,
        check_weights_in_sync,
        init_distributed,
        sync_gradients,
        wrap_ddp,
    )
    from utils.evaluation import evaluate, logits_of
    from utils.loaders import build_dataloaders
    from utils.nonfinite import LossWindow, drop_nonfinite
    from utils.progress import Progress
    from utils.resume import Position, check_can_resume, data_order_state, load_resume, resume_command
    from utils.runtime import autocast, fused_on_cuda, grad_scaler, seed_everything
    from utils.signals import StopSignals
    from utils.tensorboard import log_graph_once, open_writer, unwrap

    # `resume=RUN_DIR`: continue that run from its last checkpoint, with the config it was started with.
    resumed = load_resume(cfg, HydraConfig.get()) if cfg.get("resume") else None
    if resumed:
        cfg = resumed.cfg
        log.info("Resuming from %s (step %d)", resumed.path, resumed.state["step"])
    check_config(cfg)
    # Plain attributes: the loop reads these every step, and an OmegaConf lookup costs microseconds each.
    tcfg, lcfg = plain(cfg.trainer), plain(cfg.logging)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("Run directory: %s", run_dir)
    log.info("TensorBoard:   tensorboard --logdir %s", shlex.quote(str(run_dir / "tb")))

    # --- Set-up: seed, device, data, model, optimizer, schedule -----------------------------------------
    # Under torchrun (or several SLURM tasks) join the process group; run plainly, world_size is 1.
    ddp = init_distributed(tcfg.device)
    device = ddp.device
    # A random stream per rank (dropout, augmentation); DDP hands every rank rank 0's initial weights.
    seed_everything(tcfg.seed + ddp.rank, tcfg.deterministic)
    torch.backends.cudnn.benchmark = tcfg.cudnn_benchmark and not tcfg.deterministic

    splits = build("data", cfg.data.dataset)
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
    batches_per_epoch = min(len(loaders.train), tcfg.limit_batches or math.inf)
    steps_per_epoch = math.ceil(batches_per_epoch / tcfg.accumulate_grad_batches)
    total_steps = tcfg.max_steps or tcfg.max_epochs * steps_per_epoch
    max_epochs = math.ceil(total_steps / steps_per_epoch)
    log.info(
        "Data: %d train / %d val / %d test samples; %d optimizer steps over %d epochs",
        len(splits.train),
        len(splits.val),
        len(splits.test),
        total_steps,
        max_epochs,
    )

    model = build("model", cfg.model).to(device)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log.info(
        "Model: %s, %.2fM parameters", type(model).__name__, sum(p.numel() for p in model.parameters()) / 1e6
    )
    optimizer = build("optimizer", fused_on_cuda(cfg.optimizer, device), model.parameters())
    scheduler = build("scheduler", cfg.scheduler, optimizer, total_steps=total_steps)
    scaler = grad_scaler(device, tcfg.precision)
    # Compile after the graph source is kept: log_graph_once traces the original module, not the compiled one.
    train_model = torch.compile(model) if tcfg.compile else model
    # Evaluation runs outside DDP (each rank on its shard, metrics summed): a DDP forward syncs buffers.
    eval_model = train_model
    # DDP wraps the compiled model; its backward averages gradients over ranks. Alone: the model itself.
    train_model = wrap_ddp(train_model, ddp)
    # A resumed run takes back every state it saved (weights, optimizer, schedule, scaler, RNG streams) and
    # the position it reached; a new one starts at zero.
    start = Position()
    if resumed:
        check_can_resume(resumed, loaders.train, total_steps, run_dir)
        start = resumed.restore(unwrap(model), optimizer, scheduler, scaler)

    # Rank 0 alone writes TensorBoard, checkpoints and metrics.json; elsewhere the writer is None.
    # Resumed: hide the events that the interrupted run wrote after its checkpoint, so no step shows twice.
    writer = open_writer(run_dir / "tb", enabled=ddp.is_main, purge_step=start.step + 1 if resumed else None)
    # TEXT tab: the resolved config and the environment (also env.json); HPARAMS tab: this run's
    # hyperparameters, written now so that a run killed midway still shows in the table.
    if not resumed:  # the interrupted run wrote these already, and env.json describes where it started
        log_run_start(writer, cfg, run_dir, device)
    ckpt_dir = run_dir / "checkpoints"
    progress = Progress(lcfg.progress_bar, total_steps)

    def checkpoint(epoch: int, batch: int) -> dict:
        """Everything a resume needs to go on exactly, as tensors and plain containers (weights_only)."""
        return {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "batch_in_epoch": batch,  # batches of `epoch` already trained on
            "step": step,
            "best_val_acc": best_acc,
            "val_last": {"loss": val["loss"], "acc": val["acc"]} if val else None,
            "rng": rng_state(),
            "data_order": data_order_state(loaders.train, epoch, batch),
            "window": losses.state(),  # the losses that the next log line averages
            "nonfinite_skipped": skipped,
            "config": OmegaConf.to_container(cfg, resolve=True),
        }

    last_good = None  # the newest checkpoint, which the error for a non-finite loss names

    def save(name: str, epoch: int, batch: int = 0) -> Path:
        """Every checkpoint goes through here: never one of weights that a non-finite loss has spoiled, and
        TensorBoard flushed first, so that a resumed run finds every event up to this step on disk."""
        nonlocal last_good
        losses.check(last_good, writer)
        writer.flush()
        save_checkpoint(checkpoint(epoch, batch), ckpt_dir / name)
        last_good = ckpt_dir / name
        return last_good

    # --- The loop -----------------------------------------------------------------------------------------
    step, best_acc, val = start.step, start.best_val_acc, start.val
    accum = tcfg.accumulate_grad_batches
    # Losses stay on the device; they are read (the loop's one sync) only every logging.every_n_steps.
    losses = LossWindow(lcfg.every_n_steps * accum, device, state=start.window)
    skipped = start.nonfinite_skipped  # batches dropped for a non-finite loss (trainer.skip_nonfinite)
    seen, window_start = 0, time.perf_counter()
    stop = StopSignals()  # Ctrl-C, SIGTERM: finish the step, save last.pt, exit 130 / 143
    stopped_at, epoch = None, start.epoch - 1
    # (samples, seconds) of each logging window, for the throughput in metrics.json.
    windows: list[tuple[int, float]] = []
    train_model.train()
    for epoch in range(start.epoch, max_epochs):
        first = start.batch if epoch == start.epoch else 0  # a resumed run goes on mid-epoch
        loaders.train.set_epoch(epoch, first)
        resume_at = (epoch + 1, 0)  # where last.pt says to go on: the next epoch, unless we stop mid-epoch
        for i, (x, y) in enumerate(loaders.train, start=first):
            if i >= batches_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if tcfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if step == 0 and i == 0 and lcfg.graph:
                log_graph_once(writer, model, x[:2])
            if step == 0 and i == 0 and lcfg.images:
                log_input_images(writer, x, cfg.data, step)

            update = (i + 1) % accum == 0 or i + 1 == batches_per_epoch
            # DDP averages gradients over ranks in backward; not on batches that only accumulate them.
            with sync_gradients(train_model, update):
                with autocast(device, tcfg.precision):
                    loss = F.cross_entropy(logits_of(train_model(x)), y)
                if tcfg.skip_nonfinite and drop_nonfinite(loss):
                    # Drop this batch, with the batches it was accumulating with.
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    continue
                scaler.scale(loss / accum if accum > 1 else loss).backward()
            losses.add(loss, step + 1)
            seen += y.shape[0] * ddp.world_size  # over all ranks: each runs batches of the same size

            if not update:
                continue  # accumulate gradients: no optimizer step on this batch
            if tcfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if histograms_due(lcfg.histograms_every_n_epochs, step + 1, steps_per_epoch):
                log_histograms(writer, model, step + 1)  # before zero_grad: the gradients are still there
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            progress.advance()

            synced = step % lcfg.every_n_steps == 0 or step == total_steps
            if synced:
                # The one sync point of the loop: reading the losses makes the device catch up. Under DDP
                # they are averaged over ranks, and a non-finite one stops every rank alike.
                values = {"loss": losses.read(last_good, writer), "lr": scheduler.get_last_lr()[0]}
                elapsed = time.perf_counter() - window_start
                windows.append((seen, elapsed))
                values["samples_per_s"] = seen / elapsed
                if writer:
                    for key, value in values.items():
                        writer.add_scalar(f"train/{key}", value, step)
                if lcfg.lr_per_group:
                    log_lr_per_group(writer, optimizer, step)
                progress.report(step, epoch, values)
                losses.reset()
                seen, window_start = 0, time.perf_counter()

            if tcfg.checkpoint_every_n_steps and step % tcfg.checkpoint_every_n_steps == 0 and ddp.is_main:
                # last.pt first, then step_<N>.pt as a second name of it: once that exists, last.pt is as new.
                link_checkpoint(save("last.pt", epoch, i + 1), ckpt_dir / f"step_{step:08d}.pt")
                prune_step_checkpoints(ckpt_dir, tcfg.keep_step_checkpoints)
            if stop.agreed(synced, device):
                stopped_at = (epoch, i + 1)
                break
            if step >= total_steps:
                if i + 1 < batches_per_epoch:
                    resume_at = (epoch, i + 1)  # a longer resumed run goes on with this epoch's next batch
                break
        if stopped_at:
            break

        epoch_end = time.perf_counter()  # validation and checkpoints are kept out of samples_per_s
        last_epoch = epoch + 1 == max_epochs or step >= total_steps
        improved = False
        if (epoch + 1) % tcfg.val_every_n_epochs == 0 or last_epoch:
            val = evaluate(eval_model, loaders.val, device, tcfg.precision, tcfg.channels_last)
            if writer:
                writer.add_scalar("val/loss", val["loss"], step)
                writer.add_scalar("val/acc", val["acc"], step)
            if lcfg.confusion_matrix:
                log_per_class(writer, val["confusion"], step)  # confusion matrix, per-class accuracy
            log.info("epoch %d step %d: val loss %.4f, val acc %.4f", epoch, step, val["loss"], val["acc"])
            improved = val["acc"] > best_acc  # val is summed over ranks: all ranks agree
            best_acc = max(best_acc, val["acc"])
        if ddp.is_main and improved:
            # best.pt first: a kill before last.pt follows only repeats this epoch. Then last.pt, the same
            # state, as a second name of that file: one write per epoch, not two.
            link_checkpoint(save("best.pt", *resume_at), ckpt_dir / "last.pt")
        elif ddp.is_main:
            save("last.pt", *resume_at)
        window_start += time.perf_counter() - epoch_end
        if step >= total_steps:
            break
    progress.close()
    if stopped_at:
        # Ctrl-C or SIGTERM: the step in flight is done; keep it, close TensorBoard, say how to go on.
        if ddp.is_main:
            save("last.pt", *stopped_at)
            writer.close()
        log.warning("Stopped by %s at step %d. Resume with: %s", stop.name, step, resume_command(run_dir))
        sys.exit(stop.exit_code)
    stop.restore()
    check_weights_in_sync(model, ddp)  # under DDP: every rank logs a digest of its weights; they must agree

    # --- Test the best weights, and report -----------------------------------------------------------------
    from utils.checkpoint import load_checkpoint

    barrier()  # rank 0 has written best.pt; now the other ranks may read it
    unwrap(model).load_state_dict(load_checkpoint(ckpt_dir / "best.pt", map_location=device)["model"])
    test = evaluate(model, loaders.test, device, tcfg.precision, tcfg.channels_last)
    metrics = {
        "test/acc": test["acc"],
        "test/loss": test["loss"],
        "val/acc_best": best_acc,
        "val/acc_last": val["acc"],
        "epochs": epoch + 1,
        "steps": step,
        "nonfinite_batches_skipped": skipped,
    }
    # Training throughput over every logging window but the first, which holds the one-off costs
    # (allocator warm-up, cudnn autotuning, torch.compile, starting workers); `make bench` reads it.
    steady = windows[1:] or windows
    metrics["train_seconds"] = sum(seconds for _, seconds in windows)
    metrics["samples_per_s"] = sum(n for n, _ in steady) / max(sum(seconds for _, seconds in steady), 1e-9)
    log_run_end(writer, metrics, step)  # test/acc, test/loss, val/acc_best; the HPARAMS session ends
    if ddp.is_main:
        writer.close()
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "Test accuracy %.4f (best val %.4f). Metrics: %s", test["acc"], best_acc, run_dir / "metrics.json"
    )
    return best_acc


def build(group: str, node: DictConfig, *args, **kwargs):
    """instantiate(node), then call the result with args for `_partial_` configs (the optimizer gets the
    parameters, the schedule the optimizer). A bad value fails in one line that names the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from data.splits import DatasetError

    try:
        obj = instantiate(node)
        return obj(*args, **kwargs) if args or kwargs else obj
    except DatasetError:
        raise
    except (InstantiationException, TypeError, ValueError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if isinstance(cause, DatasetError):
            raise cause from None
        target = node.get("_target_", "?")
        raise ConfigError(
            f"could not build {group} ({target}): {type(cause).__name__}: {one_line(cause)}"
        ) from None


if __name__ == "__main__":
    main()
