"""A trained run's predictions for new inputs.

    python predict.py run=outputs/<day>/<run> input=images/                 # its best.pt, else last.pt
    python predict.py run=outputs/<day>/<run>/checkpoints/last.pt input=table.csv output=out.jsonl
    python predict.py run=outputs/<day>/<run> input=prompts.txt max_new_tokens=100

The model, its task and its data's settings (image size, channels, mean and std, a table's feature columns
and their standardization, the class names) come from the config saved in the checkpoint, under the same
trust rules as eval.py: read with torch.load(weights_only=True), only the allowed `_target_`s built,
nothing resolved. The inputs are read by data/inputs.py, as the run's test samples were prepared; the task
says what a prediction is (its `predict` method) and data/predictions.py writes one row an input, as CSV
or JSONL, whole or not at all (docs/predict.md).
"""

from __future__ import annotations

# First, before anything slow: Ctrl-C or SIGTERM from here on ends in one line, never a traceback.
from system.signals import stop_while_starting  # isort: skip

if __name__ == "__main__":
    stop_while_starting("predict.py")

import logging
import sys

import hydra
from omegaconf import DictConfig

from life.run import RunLife
from setup.config import ConfigError
from store.rundir import register_resolvers

log = logging.getLogger("predict")
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    # One line for an error a user can fix (exit 2) or a signal (128 + N), as train.py and eval.py.
    with RunLife("predict.py", log) as life:
        life.phase = "evaluate"  # a stop from here on writes nothing
        predict(cfg)
    if life.exit_code:
        sys.exit(life.exit_code)


def predict(cfg: DictConfig):
    """Write the predictions of cfg.run's model for cfg.input to cfg.output; returns the output's path."""
    # torch is imported here, not at the top, so `predict.py --help` stays instant.
    import torch
    from omegaconf import OmegaConf

    from data.inputs import read_inputs
    from data.predictions import Predictions, check_output
    from setup.runtime import pick_device
    from store.trained import load_trained
    from tasks.base import Predicting, TaskError

    output = check_output(cfg.output, cfg.overwrite)  # before any work: an output that exists is refused
    check_options(cfg)
    device = pick_device(cfg.device)
    trained = load_trained(str(cfg.run), device, cfg.get("allowed_targets") or ())
    data = OmegaConf.to_container(trained.cfg.data, resolve=True)  # stored resolved: plain values
    inputs = read_inputs(data, cfg.input)
    tokens = (data.get("declares") or {}).get("input") == "tokens"
    how = Predicting(
        class_names=data.get("class_names"),
        context=int(data["input_shape"][0]) if tokens else None,  # the longest context the model reads
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
    )
    task, model = trained.task, trained.model
    bar = progress(len(inputs.names), cfg.progress_bar)
    with Predictions(output, cfg.overwrite) as out, torch.no_grad():
        for names, batch in inputs.batches(cfg.batch_size or int(data["batch_size"])):
            moved = batch.to(device) if isinstance(batch, torch.Tensor) else [x.to(device) for x in batch]
            rows = task.predict(model, moved, how)
            if len(rows) != len(names):
                raise TaskError(
                    f"{type(task).__name__}.predict returned {len(rows)} rows for {len(names)} inputs"
                )
            for name, row in zip(names, rows, strict=True):
                out.add(name, row)
            if bar is not None:
                bar.update(len(names))
    if bar is not None:
        bar.close()
    log.info("%s: %d predictions of %s in %s", trained.path, len(inputs.names), cfg.input, output)
    return output


def check_options(cfg: DictConfig) -> None:
    """The numbers of the command line, each in one line naming its key."""
    whole = {"batch_size": 1, "max_new_tokens": 0, "seed": 0}  # the least each may be
    for key, least in whole.items():
        value = cfg[key]
        if value is None and key == "batch_size":  # the run's own
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{key}={value} must be a whole number >= {least}")
    if (
        isinstance(cfg.temperature, bool)
        or not isinstance(cfg.temperature, (int, float))
        or cfg.temperature < 0
    ):
        raise ConfigError(f"temperature={cfg.temperature} must be a number >= 0 (0: greedy)")


def progress(total: int, enabled: bool):
    """A tqdm bar on a terminal (stderr), else none: a log file gets the one line at the end."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="input", dynamic_ncols=True, file=sys.stderr)


if __name__ == "__main__":
    from life.cli import run

    run(main, "predict.py", "predict")
