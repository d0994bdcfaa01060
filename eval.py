"""Evaluate a checkpoint on a test split.

    python eval.py ckpt=outputs/<day>/<run>/checkpoints/best.pt                    # its own data
    python eval.py ckpt=outputs/<day>/<run>/checkpoints/best.pt data=<another>      # of the same shape
    python eval.py ckpt=outputs/<day>/<run>                                         # its best.pt, else last.pt

The model, its data and the rest come from the config saved in the checkpoint, so that no one has to
repeat the training command; only `data=` and `device=` may change. The result goes to metrics.json next to
the checkpoint and, as eval/<data>/<metric> (the task's metrics) at the checkpoint's step, to the run's
TensorBoard. The checkpoint is read with torch.load(weights_only=True): a file carrying pickled code is
refused, unread.
"""

from __future__ import annotations

# First, before anything slow: Ctrl-C or SIGTERM from here on ends in one line, never a traceback.
from system.signals import stop_while_starting  # isort: skip

if __name__ == "__main__":
    stop_while_starting("eval.py")

import logging
import sys

import hydra
from omegaconf import DictConfig

from life.run import RunLife
from setup.config import ConfigError, check_config
from store.rundir import register_resolvers

log = logging.getLogger("eval")
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    # One line for an error a user can fix (exit 2) or a signal (128 + N), as train.py.
    with RunLife("eval.py", log) as life:
        life.phase = "evaluate"
        evaluate_checkpoint(cfg)
    if life.exit_code:
        sys.exit(life.exit_code)


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    # torch is imported here, not at the top, so `eval.py --help` stays instant.
    from hydra.core.hydra_config import HydraConfig

    from board.writer import writing
    from loop.evaluation import evaluate
    from setup.parts import build, build_data, build_loaders, check_fit
    from setup.runtime import pick_device
    from setup.trust import stored_config
    from store.trained import read_evaluated, trained_model
    from system.files import write_json
    from system.layout import RunDir

    ckpt = read_evaluated(str(cfg.ckpt))  # a checkpoint file, or a run directory: its best.pt, else last.pt
    path = ckpt.path
    # Data, never code: allowed _target_s only, nothing resolved (setup/trust.py).
    run_cfg = stored_config(ckpt.config, f"checkpoint {path}", cfg.get("allowed_targets") or ())
    data_name = HydraConfig.get().runtime.choices.get("data")
    trained = run_cfg.data
    if cfg.get("data") is not None:
        run_cfg.data = cfg.data  # its interpolations (${trainer.seed}, ...) now resolve in the run's config
    else:
        data_name = str(run_cfg.data.dataset._target_).rsplit(".", 1)[-1]
    check_config(run_cfg)

    device = pick_device(cfg.device)
    # The data first: what only its files know (a table's features, classes) is read again, into run_cfg.
    splits = build_data(run_cfg)
    if cfg.get("data") is not None:
        check_same_shape(trained, run_cfg.data, data_name)
    task = build("task", run_cfg.task)
    model = trained_model(ckpt, run_cfg, device)
    splits, loaders, _ = build_loaders(run_cfg, splits, device)
    check_fit(run_cfg, task, model, splits, loaders.test, device)  # leaves the model as it was
    t = run_cfg.trainer
    test, _, _ = evaluate(model, loaders.test, task, device, t.precision, t.channels_last, split="test",
                          train=loaders.train_in_order)  # fmt: skip

    metrics = {
        "checkpoint": path.name,
        "data": data_name,
        "step": ckpt.step,
        "epoch": ckpt.epoch,
        **{f"test/{k}": v for k, v in test.items()},
        "test/count": len(splits.test),
    }
    # Its numbers beside the checkpoint, whole or absent; the run's TensorBoard (tb/ beside a checkpoint
    # kept outside a run).
    written = RunDir.metrics_beside(path)
    write_json(written, metrics)
    with writing(RunDir.of_checkpoint(path).tb) as writer:
        for key, value in test.items():
            writer.add_scalar(f"eval/{data_name}/{key}", value, ckpt.step)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items())
    log.info(
        "%s on %s test (%d samples): %s. Metrics: %s",
        path,
        data_name,
        len(splits.test),
        shown,
        written,
    )
    return metrics


def check_same_shape(trained: DictConfig, chosen: DictConfig, name: str | None) -> None:
    """The model was built for the trained data's channels, size and classes; another dataset must match."""
    from omegaconf import ListConfig, OmegaConf

    def value(node, key):
        v = OmegaConf.select(node, key)
        return list(v) if isinstance(v, ListConfig) else v  # a list's items resolve as they are read

    keys = ("declares.input", "declares.target", "input", "target", "in_channels", "image_size", "num_classes",
            "input_shape", "num_outputs")  # fmt: skip
    for key in keys:
        if (
            value(trained, key) is not None
            and value(chosen, key) is not None
            and value(trained, key) != value(chosen, key)
        ):
            raise ConfigError(
                f"data={name} has {key}={value(chosen, key)}, but the checkpoint's model was trained with "
                f"{key}={value(trained, key)}"
            )


if __name__ == "__main__":
    from life.cli import run

    run(main, "eval.py", "eval")
