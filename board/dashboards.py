"""What a run shows in TensorBoard besides its scalars: the config and the environment as text,
hyperparameters for the HPARAMS tab, optional weight/gradient histograms, and what the loop writes at its
moments (the start, the first batch). The pictures themselves are made in pictures.py.

A writer is None on ranks other than 0: every function here then does nothing, so the loop calls them
without guards.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from board.pictures import log_input_images
from system.files import write_json
from system.layout import RunDir

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
# --- Histograms and learning rates ------------------------------------------------------------------------


def histograms_due(every_n_epochs: int, step: int, steps_per_epoch: int) -> bool:
    """True at the last optimizer step of every N-th epoch (`step` counted after that update)."""
    return bool(every_n_epochs) and step % (every_n_epochs * steps_per_epoch) == 0


def log_histograms(writer, model: torch.nn.Module, step: int) -> None:
    """HISTOGRAMS / DISTRIBUTIONS tabs: every parameter, and its gradient if it has one. Call it after the
    optimizer step and before zero_grad: GradScaler.step has already unscaled the gradients by then."""
    if writer is None:
        return
    from board.writer import unwrap

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
    write_json(RunDir(run_dir).env, env)
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


@contextlib.contextmanager
def run_writer(parts, resumed_step: int | None):
    """The run's SummaryWriter on rank 0 (None elsewhere), closed when the block ends (board/
    writer.py `writing`), with the experiment trackers fed from it (board/trackers.py). A new run writes
    its config, environment and HPARAMS row, and the task's reference numbers, first; a resumed one hides
    the events that the interrupted run wrote after its checkpoint, so that no step shows twice."""
    from board.trackers import tracking
    from board.writer import writing

    purge = None if resumed_step is None else resumed_step + 1
    with (
        writing(RunDir(parts.run_dir).tb, enabled=parts.ddp.is_main, purge_step=purge) as writer,
        # MLflow, W&B (logging.trackers): each gets what the writer writes, from here to the run's end.
        tracking(writer, parts.cfg, parts.logging, parts.run_dir, resumed=resumed_step is not None),
    ):
        if writer and resumed_step is None:  # the interrupted run wrote these already
            log_run_start(writer, parts.cfg, parts.run_dir, parts.device, metric_tags(parts.task)[0])
            for name, value in parts.reference.items():
                writer.add_scalar(f"reference/{name}", value, 0)
        yield writer


def log_first_batch(parts, batch) -> None:
    """At the first step: the model's graph (logging.graph) and the input images (logging.images)."""
    from board.writer import log_graph_once

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
