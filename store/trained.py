"""A trained model from Python, for a notebook or a serving script:

    from store.trained import load_trained

    trained = load_trained("outputs/2026-12-06/14-03-11_mlp_digits")   # a run directory, or a .pt file
    trained.model            # in eval mode, with the weights its run evaluated (best.pt; the EMA if on)
    trained.task             # the task: trained.task.forward(trained.model, batch), its metrics
    trained.cfg              # the run's config, as stored in the checkpoint

The same trust rules as eval.py: the checkpoint is read with torch.load(weights_only=True), its stored
config may only build the allowed `_target_`s (extend them with `allowed_targets=`), and nothing in it is
resolved or run. No data set is loaded.

`trained_model` is the one way from a checkpoint to its model (load_trained's and eval.py's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from models.pretrained import from_checkpoint
from setup.config import ConfigError
from setup.parts import build
from setup.trust import stored_config
from store.checkpoint import Checkpoint, CheckpointError, load_weights, read_checkpoint
from system.layout import checkpoint_to_evaluate


@dataclass
class Trained:
    model: torch.nn.Module
    task: object  # tasks.base.Task
    cfg: DictConfig
    path: Path  # the checkpoint it came from
    step: int


def load_trained(path, device="cpu", allowed_targets=()) -> Trained:
    """The model of a checkpoint file, or of a run directory (its best.pt, else last.pt), with its weights,
    its task and its config. Raises CheckpointError or ConfigError, one line naming the file."""
    ckpt = read_evaluated(path, device)
    cfg = stored_config(ckpt.config, f"checkpoint {ckpt.path}", allowed_targets)
    task = build("task", cfg.task)
    return Trained(trained_model(ckpt, cfg, device), task, cfg, ckpt.path, ckpt.step)


def read_evaluated(path, device="cpu") -> Checkpoint:
    """The checkpoint that `path` names for evaluation, read: a file itself, a run directory its best.pt
    (else last.pt; system/layout.py). Raises CheckpointError, one line naming the path."""
    file = checkpoint_to_evaluate(path)
    if file is None:
        raise CheckpointError(f"{Path(path)} holds no checkpoints/best.pt or last.pt")
    return read_checkpoint(file, map_location=device)


def trained_model(ckpt: Checkpoint, cfg: DictConfig, device="cpu") -> torch.nn.Module:
    """The model that `cfg` builds (a checkpoint's own config, checked by setup/trust.py), its lazy
    modules given their shapes, with the weights the checkpoint's run evaluated (the EMA's, when it kept
    one), in eval mode. Raises CheckpointError when the weights do not fit the model."""
    with from_checkpoint():  # the checkpoint's weights, not the pretrained file's (which may be absent)
        model = build("model", cfg.model).to(device)
    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
        materialize(model, cfg, device)
    load_weights(model, ckpt.evaluated_weights, ckpt.path)
    return model.eval()


def materialize(model: torch.nn.Module, cfg: DictConfig, device) -> None:
    """Lazy modules take their shapes from one input of the data's declared shape (no data is loaded)."""
    shape = list(cfg.data.input_shape)
    kind = OmegaConf.select(cfg, "data.declares.input", default=cfg.data.get("input"))  # older: beside
    example = torch.zeros(2, *shape, dtype=torch.long if kind == "tokens" else torch.float32)
    try:
        with torch.no_grad():
            model.eval()(example.to(device))
    except (RuntimeError, ValueError, TypeError) as err:
        raise ConfigError(
            f"the model's lazy modules could not take their shapes from data.input_shape={shape}: {err}"
        ) from None
