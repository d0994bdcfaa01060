"""What a run shows in TensorBoard besides its scalars: input images, per-class results, the config and the
environment as text, hyperparameters for the HPARAMS tab, and optional weight/gradient histograms.

Every function takes the writer first and does nothing when it is None (ranks other than 0), so train.py
calls them without guards. Images are built with torch alone (no matplotlib): [3, H, W] uint8 tensors.
"""

from __future__ import annotations

import io
import json
import logging
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from utils.tensorboard.writer import add_scalars

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "torchvision", "tensorboard", "hydra-core", "omegaconf", "numpy")


def metric_tags(task) -> tuple[list[str], list[str]]:
    """The metric columns of the HPARAMS tab for this task: val/<metric> (written at every validation, so a
    killed run still shows its last values), and the final ones that log_run_end writes once:
    val/<monitor>_best and test/<metric>."""
    final = [f"val/{task.monitor}_best", *(f"test/{m}" for m in task.metrics)]
    return [*(f"val/{m}" for m in task.metrics), *final], final


# Command-line overrides of these keys are not extra hparams: they are logging, paths or already main ones.
_NOT_HPARAMS = ("logging.", "hydra.", "paths.", "name", "tags")
_MAIN_KEYS = ("optimizer.lr", "data.batch_size", "trainer.precision", "trainer.seed")

# Viridis at five stops: dark for 0, yellow for 1; readable on TensorBoard's light and dark themes.
_VIRIDIS = torch.tensor(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=torch.float32
)
# A 3x5 pixel font for the digits of class indices on the axes.
_DIGITS = (
    "111101101101111",
    "010110010010111",
    "111001111100111",
    "111001111001111",
    "101101111001001",
    "111100111001111",
    "111100111101111",
    "111001001001001",
    "111101111101111",
    "111101111001111",
)


# --- Images -----------------------------------------------------------------------------------------------


def input_image_grid(x: torch.Tensor, mean=None, std=None, max_images: int = 32, min_size: int = 32):
    """A grid of the first images of a normalized batch, back in [0, 1] pixel units, float [3, H, W] on CPU:
    8 a row, 2 px black padding. Small images (8x8 digits) are enlarged by an integer factor, nearest
    neighbour, so pixels stay sharp. Plain torch: torchvision's make_grid would cost its import (~1 s)."""
    x = x[:max_images].detach().float().cpu()
    if mean is not None and std is not None:
        mean = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if mean.shape[1] in (1, x.shape[1]) and std.shape[1] in (1, x.shape[1]):
            x = x * std + mean
    if x.shape[1] != 3:
        x = x[:, :1].expand(-1, 3, -1, -1)  # grey, or other band counts: the first channel, as grey
    scale = max(1, math.ceil(min_size / max(x.shape[-2:])))
    x = x.clamp(0, 1).repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    n, _, h, w = x.shape
    cols, pad = min(n, 8), 2
    rows = math.ceil(n / cols)
    grid = torch.zeros(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for k in range(n):
        top, left = pad + (k // cols) * (h + pad), pad + (k % cols) * (w + pad)
        grid[:, top : top + h, left : left + w] = x[k]
    return grid


def log_input_images(writer, x: torch.Tensor, data_cfg, step: int) -> bool:
    """IMAGES tab: a grid of the first batch as the model sees it, denormalized with data.mean / data.std."""
    if writer is None:
        return False
    if x.dim() != 4:
        log.info("Input images not logged: the batch is %d-d, not [N, C, H, W].", x.dim())
        return False
    mean, std = data_cfg.get("mean"), data_cfg.get("std")  # absent from a forker's data config: as is
    writer.add_image("inputs/train_batch", input_image_grid(x, mean, std), step)
    return True


def colormap(values: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] (any shape S) to viridis colours, uint8 of shape [3, *S]."""
    pos = values.float().clamp(0, 1) * (len(_VIRIDIS) - 1)
    low = pos.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (pos - low).unsqueeze(-1)
    rgb = _VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac
    return rgb.round().to(torch.uint8).movedim(-1, 0)


def _text_mask(text: str, scale: int) -> torch.Tensor:
    """Bool [5*scale, (4*len-1)*scale] mask of a string of digits in the 3x5 font."""
    glyphs = []
    for ch in text:
        glyph = torch.tensor([int(b) for b in _DIGITS[int(ch)]], dtype=torch.bool).view(5, 3)
        glyphs += [glyph, torch.zeros(5, 1, dtype=torch.bool)]
    mask = torch.cat(glyphs[:-1], dim=1)
    return mask.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def _stamp(image: torch.Tensor, text: str, top: int, left: int, height: int, width: int, scale: int):
    """Draw `text` in white, centred in the box (top, left, height, width) of a [3, H, W] uint8 image."""
    mask = _text_mask(text, scale)
    h, w = mask.shape
    if h > height or w > width:
        return
    y, x = top + (height - h) // 2, left + (width - w) // 2
    image[:, y : y + h, x : x + w][:, mask] = 255


def _cell_size(num_classes: int) -> int:
    # About 480 px across, 48 px cells at most; one pixel a class past 480 classes.
    return max(1, min(48, 480 // max(num_classes, 1)))


def _label_margins(num_classes: int, cell: int) -> tuple[int, int, int]:
    """Font scale, left margin (widest index) and top margin (one glyph high); no labels in small cells."""
    if cell < 10:
        return 1, 0, 0
    scale = max(1, cell // 10)
    return scale, (4 * len(str(num_classes - 1)) - 1) * scale + 4, 5 * scale + 4


def confusion_matrix_image(confusion: torch.Tensor) -> torch.Tensor:
    """[3, H, W] uint8: rows are true classes, columns predictions, colour is the row-normalized share
    (the diagonal is per-class recall). Class indices are drawn on the left and top when cells allow."""
    cm = confusion.detach().cpu().double()
    c = cm.shape[0]
    share = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
    cell = _cell_size(c)
    grid = colormap(share).repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    if cell >= 8:  # a dark line between cells
        grid[:, cell - 1 :: cell, :] = 0
        grid[:, :, cell - 1 :: cell] = 0
    scale, left, top = _label_margins(c, cell)
    image = torch.zeros(3, top + c * cell, left + c * cell, dtype=torch.uint8)
    image[:, top:, left:] = grid
    if left:
        for k in range(c):
            _stamp(image, str(k), top + k * cell, 0, cell, left, scale)  # true class, on the left
            _stamp(image, str(k), 0, left + k * cell, top, cell, scale)  # predicted class, on top
    return image


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Share of each true class predicted right; NaN for a class absent from the split."""
    cm = confusion.detach().cpu().double()
    return cm.diagonal() / cm.sum(dim=1).where(cm.sum(dim=1) > 0, torch.tensor(float("nan")))


def per_class_accuracy_image(accuracy: torch.Tensor, width: int = 320) -> torch.Tensor:
    """[3, H, W] uint8 horizontal bars on a grey track, one per class (class 0 on top); length and colour
    show the accuracy. A class absent from the split (NaN) has an empty row, without a track."""
    c = accuracy.numel()
    row = min(24, _cell_size(c))
    scale, left, _ = _label_margins(c, row)
    image = torch.zeros(3, c * row, left + width, dtype=torch.uint8)
    gap = max(1, row // 8)
    for k, acc in enumerate(accuracy.tolist()):
        top = k * row
        if left:
            _stamp(image, str(k), top, 0, row, left, scale)
        if math.isnan(acc):
            continue
        bar = image[:, top + gap : top + row - gap, left:]
        bar[:] = 48
        bar[:, :, : round(acc * width)] = colormap(torch.tensor(acc)).view(3, 1, 1)
    return image


def add_png(writer, tag: str, image: torch.Tensor, step: int) -> None:
    """writer.add_image for a finished uint8 [3, H, W] image, encoded straight to PNG. add_image first
    converts to float and back and resizes to the same size (LANCZOS): 7 ms for the 10-class confusion
    matrix at every validation, where this takes 3 ms. Written like the HPARAMS summaries, through
    writer.file_writer."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    channels, height, width = image.shape
    buffer = io.BytesIO()
    # zlib level 1: half the encoding time of the default 6, for files of a few kB either way.
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG", compress_level=1)
    png = Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue()
    )
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=png)]), step)


def log_per_class(writer, confusion: torch.Tensor, step: int, prefix: str = "val") -> None:
    """IMAGES tab: the confusion matrix and a per-class accuracy bar chart. SCALARS tab: one accuracy curve
    per class under `<prefix>_class_acc/`, named by zero-padded index so that they sort in class order."""
    if writer is None:
        return
    accuracy = per_class_accuracy(confusion)
    add_png(writer, f"{prefix}/confusion_matrix", confusion_matrix_image(confusion), step)
    add_png(writer, f"{prefix}/per_class_accuracy", per_class_accuracy_image(accuracy), step)
    width = len(str(len(accuracy) - 1))
    curves = {f"{k:0{width}d}": acc for k, acc in enumerate(accuracy.tolist()) if not math.isnan(acc)}
    add_scalars(writer, curves, step, f"{prefix}_class_acc")


# --- Histograms and learning rates ------------------------------------------------------------------------


def histograms_due(every_n_epochs: int, step: int, steps_per_epoch: int) -> bool:
    """True at the last optimizer step of every N-th epoch (`step` counted after that update)."""
    return bool(every_n_epochs) and step % (every_n_epochs * steps_per_epoch) == 0


def log_histograms(writer, model: torch.nn.Module, step: int) -> None:
    """HISTOGRAMS / DISTRIBUTIONS tabs: every parameter, and its gradient if it has one. Call it after the
    optimizer step and before zero_grad: GradScaler.step has already unscaled the gradients by then."""
    if writer is None:
        return
    from utils.tensorboard.writer import unwrap

    for name, param in unwrap(model).named_parameters():
        writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
        if param.grad is not None:
            writer.add_histogram(f"grads/{name}", param.grad.detach().float().cpu(), step)


def log_lr_per_group(writer, optimizer: torch.optim.Optimizer, step: int) -> None:
    """SCALARS tab: the learning rate of each parameter group (train/lr shows group 0 only)."""
    if writer is None:
        return
    for k, group in enumerate(optimizer.param_groups):
        writer.add_scalar(f"train/lr_group{k}", float(group["lr"]), step)


# --- Config, environment, hyperparameters -----------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None  # no git, not a repository, or an unsafe-owner refusal: the commit is unknown
    return out.stdout


def _cpu_name() -> str:
    try:  # Linux names the model here; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def environment_info(device: torch.device | None = None) -> dict:
    """Where the run ran: the template's git commit and dirty flag, Python and package versions, device."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    device = torch.device(device or "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "git": {
            "commit": commit.strip() if commit else "unknown",
            "dirty": bool(status.strip()) if status is not None else "unknown",
        },
        "python": platform.python_version(),
        "packages": packages,
        "device": {"type": device.type, "name": device_name},
        "cuda": torch.version.cuda or "none",
        "platform": platform.platform(),
    }


def environment_markdown(env: dict) -> str:
    rows = [
        ("git commit", env["git"]["commit"]),
        ("git dirty", env["git"]["dirty"]),
        ("python", env["python"]),
        *env["packages"].items(),
        ("device", f"{env['device']['type']}: {env['device']['name']}"),
        ("cuda", env["cuda"]),
        ("platform", env["platform"]),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | `{v}` |" for k, v in rows)


def config_markdown(cfg: DictConfig, overrides: list[str] | None = None) -> str:
    """The resolved config as a YAML code block, below the command-line overrides that shaped it."""
    yaml = OmegaConf.to_yaml(cfg, resolve=True)
    args = " ".join(overrides or []) or "(none)"
    return f"Overrides: `{args}`\n\n```yaml\n{yaml}```\n"


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


_MISSING = object()


def _hparam_value(value):
    if isinstance(value, bool) or value is None:
        return str(value)  # torch would store a bool as 1.0/0.0, and refuses None
    if isinstance(value, (int, float, str)):
        return value
    return None  # lists and nodes are not hparams


def run_hparams(cfg: DictConfig) -> dict:
    """The hyperparameters a sweep compares: the main ones, plus every config value set on the command
    line (so `-m model.dropout=0,0.2` shows a model.dropout column). Group choices name the config file."""
    hydra_cfg = _hydra()
    choices = hydra_cfg.runtime.choices if hydra_cfg else {}

    def choice(group: str) -> str:
        target = OmegaConf.select(cfg, f"{group}._target_", default="?")
        return str(choices.get(group) or target.rsplit(".", 1)[-1])

    hparams = {
        "task": choice("task"),
        "model": choice("model"),
        "data": choice("data"),
        "optimizer": choice("optimizer"),
        "scheduler": choice("scheduler"),
        "lr": OmegaConf.select(cfg, "optimizer.lr"),
        "batch_size": OmegaConf.select(cfg, "data.batch_size"),
        "precision": str(OmegaConf.select(cfg, "trainer.precision")),
        "seed": OmegaConf.select(cfg, "trainer.seed"),
    }
    if choices.get("experiment"):
        hparams["experiment"] = str(choices["experiment"])
    if cfg.get("tags"):
        hparams["tags"] = ",".join(str(tag) for tag in cfg.tags)
    if hydra_cfg:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
            key = override.key_or_group
            if override.is_delete() or key.startswith(_NOT_HPARAMS) or key in _MAIN_KEYS or key in hparams:
                continue
            raw = OmegaConf.select(cfg, key, default=_MISSING)
            value = None if raw is _MISSING else _hparam_value(raw)
            if value is not None:  # a group override (debug=smoke) or a list is not one value
                hparams[key] = value
    return {k: v for k, v in ((k, _hparam_value(v)) for k, v in hparams.items()) if v is not None}


def log_run_start(
    writer, cfg: DictConfig, run_dir: Path, device: torch.device | None, tags: list[str]
) -> dict:
    """TEXT tab: the resolved config and the environment (also written to run_dir/env.json). HPARAMS tab:
    this run's hyperparameters and metric names, in the run's own event file (not a subfolder), written
    now so that a run killed midway still shows in the table. Returns the hparams."""
    if writer is None:
        return {}
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    hydra_cfg = _hydra()
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg else []
    writer.add_text("run/config", config_markdown(cfg, overrides), 0)
    env = environment_info(device)
    env["tags"] = [str(tag) for tag in cfg.get("tags") or []]
    (Path(run_dir) / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    writer.add_text("run/environment", environment_markdown(env), 0)

    hparams = run_hparams(cfg)
    experiment, session_start, _ = hparams_summaries(hparams, dict.fromkeys(tags, 0.0))
    writer.file_writer.add_summary(experiment, 0)
    writer.file_writer.add_summary(session_start, 0)
    writer.flush()  # visible at once, while training goes on
    return hparams


def log_run_end(writer, metrics: dict, step: int, final_tags: list[str]) -> None:
    """The final metrics as scalars (the HPARAMS table reads each metric's last value), then the session
    end, which marks the run as finished in the HPARAMS tab."""
    if writer is None:
        return
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    for tag in final_tags:
        if metrics.get(tag) is not None:  # val/<monitor>_best is None when no validation ran
            writer.add_scalar(tag, metrics[tag], step)
    *_, session_end = hparams_summaries({}, {})
    writer.file_writer.add_summary(session_end, step)
    writer.flush()


# --- What the loop writes at its moments: the start, the first batch, the histogram epochs ------------------


def open_run_writer(parts, resumed_step: int | None):
    """The run's SummaryWriter on rank 0 (None elsewhere). A new run writes its config, environment and
    HPARAMS row, and the task's reference numbers, first; a resumed one hides the events that the
    interrupted run wrote after its checkpoint, so that no step shows twice."""
    from utils.tensorboard.writer import open_writer

    purge = None if resumed_step is None else resumed_step + 1
    writer = open_writer(parts.run_dir / "tb", enabled=parts.ddp.is_main, purge_step=purge)
    if writer and resumed_step is None:  # the interrupted run wrote these already
        log_run_start(writer, parts.cfg, parts.run_dir, parts.device, metric_tags(parts.task)[0])
        for name, value in parts.reference.items():
            writer.add_scalar(f"reference/{name}", value, 0)
    return writer


def log_first_batch(parts, batch) -> None:
    """At the first step: the model's graph (logging.graph) and the input images (logging.images)."""
    from utils.tensorboard.writer import log_graph_once

    if not parts.writer:
        return
    if parts.logging.graph:
        log_graph_once(parts.writer, parts.model, parts.task.example_input(batch))
    if parts.logging.images and (images := parts.task.images(batch)) is not None:
        log_input_images(parts.writer, images, parts.cfg.data, 0)


def log_histograms_when_due(parts, step: int) -> None:
    """Weights and gradients at the last step of every N-th epoch (logging.histograms_every_n_epochs)."""
    every = parts.logging.histograms_every_n_epochs
    if parts.writer and histograms_due(every, step, parts.plan.steps_per_epoch):
        log_histograms(parts.writer, parts.model, step)
