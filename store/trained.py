"""A trained model from Python, for a notebook or a serving script:

    from store.trained import load_trained

    trained = load_trained("outputs/2026-12-06/14-03-11_mlp_digits")   # a run directory, or a .pt file
    trained.model            # in eval mode, with the weights its run evaluated (best.pt; the EMA if on)
    trained.task             # the task: trained.task.forward(trained.model, batch), its metrics
    trained.cfg              # the run's config, as stored in the checkpoint

The same trust rules as eval.py: the checkpoint is read with torch.load(weights_only=True), its stored
config may only build the allowed `_target_`s (extend them with `allowed_targets=`), and nothing in it is
resolved or run. No data set is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from loop.state import TrainState
from setup.config import ConfigError
from setup.parts import build
from setup.trust import stored_config
from store.checkpoint import CheckpointError, load_checkpoint, load_model_state


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
    path = checkpoint_in(Path(path))
    state = load_checkpoint(path, map_location=device)
    cfg = stored_config(state.get("config"), f"checkpoint {path}", allowed_targets)
    task = build("task", cfg.task)
    model = build("model", cfg.model).to(device)
    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
        materialize(model, cfg, device)
    load_model_state(model, {"model": TrainState.evaluated_weights(state)}, path)
    step = state.get("step")
    return Trained(model.eval(), task, cfg, path, step if isinstance(step, int) else 0)


def checkpoint_in(path: Path) -> Path:
    if path.is_dir():
        found = [path / "checkpoints" / n for n in ("best.pt", "last.pt")] + [
            path / n for n in ("best.pt", "last.pt")
        ]
        for candidate in found:
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} holds no checkpoints/best.pt or last.pt")
    return path


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
