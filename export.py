"""Export a trained model to one file that runs without this project.

    python export.py run=outputs/<day>/<run> format=onnx                 # <run>/export/model.onnx
    python export.py run=outputs/<day>/<run> format=exported_program     # <run>/export/model.pt2
    python export.py run=<run>/checkpoints/last.pt format=onnx output=model.onnx overwrite=true

The model is the one eval.py evaluates (store/trained.py: best.pt, else last.pt; the EMA's weights if the
run kept one), under the same trust rules. It is exported with its batch dimension dynamic, written whole
(or not at all), then read back and run on a batch of the run's validation data and on a batch of another
size: its outputs must be PyTorch's to within `tolerance`, or nothing is kept. A model that cannot be
exported says why in one line, exit 2. ONNX needs the `export` extra (pip install -e '.[export]').
"""

from __future__ import annotations

# First, before anything slow: Ctrl-C or SIGTERM from here on ends in one line, never a traceback.
from system.signals import stop_while_starting  # isort: skip

if __name__ == "__main__":
    stop_while_starting("export.py")

import contextlib
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from life.run import RunLife
from setup.config import ConfigError
from store.rundir import register_resolvers

log = logging.getLogger("export")
register_resolvers()

# Each format: its file's suffix, and the modules it needs beyond torch (pyproject's `export` extra).
FORMATS = {
    "onnx": (".onnx", ("onnx", "onnxscript", "onnxruntime")),
    "exported_program": (".pt2", ()),
}


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    # One line for an error a user can fix (exit 2) or a signal (128 + N), as train.py.
    with RunLife("export.py", log) as life:
        life.phase = "export"
        export_run(cfg)
    if life.exit_code:
        sys.exit(life.exit_code)


def export_run(cfg: DictConfig) -> Path:
    """Export the model of cfg.run to cfg.format; the path of the file written."""
    # What a command line can get wrong is told before torch is imported or anything is read.
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is not one of: {', '.join(FORMATS)}")
    missing = [m for m in FORMATS[fmt][1] if not installed(m)]
    if missing:
        raise ConfigError(
            f"format={fmt} needs the `export` extra, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install -e '.[export]'"
        )
    tolerance = cfg.tolerance
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise ConfigError(f"tolerance={tolerance} must be a number above 0")
    file, out = paths(cfg.run, cfg.output, FORMATS[fmt][0])
    if out.is_dir():
        raise ConfigError(f"output={out} is a directory: give the file to write")
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"{out} exists: overwrite=true replaces it, or give another output=")

    # torch is imported here, not at the top, so `export.py --help` stays instant.
    from store.exported import export
    from system.files import atomic_path

    model, batches, split = model_and_batches(file, cfg.get("allowed_targets") or ())
    exported = export(model, batches[0], fmt)
    made = [folder for folder in out.parents if not folder.exists()]  # deepest first
    try:
        with atomic_path(out) as tmp:
            exported.save(tmp)
            worst = exported.check(tmp, model, batches, float(tolerance))
    except BaseException:
        for folder in made:  # the folders made for the file go with it; a file it failed to replace stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    if exported.fallback_reason:
        log.info("The dynamo ONNX exporter failed (%s): the %s exporter made the file", exported.fallback_reason,
                 exported.exporter)  # fmt: skip
    sizes = " and ".join(str(len(x)) for x in batches)
    log.info(
        "%s exported by the %s exporter to %s: outputs within %.2e of PyTorch's on %s batches of %s "
        "(tolerance %g)",
        file,
        exported.exporter,
        out,
        worst,
        split,
        sizes,
        tolerance,
    )
    return out


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def paths(run, output, suffix: str) -> tuple[Path, Path]:
    """The checkpoint that `run` names (a run directory: its best.pt, else last.pt), and the file to write:
    `output`, or <run>/export/model<suffix>."""
    from system.layout import RunDir, checkpoint_to_evaluate

    file = checkpoint_to_evaluate(str(run))
    if file is None:
        raise ConfigError(f"run={run}: {Path(str(run))} holds no checkpoints/best.pt or last.pt")
    if output is not None:
        return file, Path(os.path.expanduser(str(output)))
    return file, RunDir.of_checkpoint(file).exported(suffix)


def model_and_batches(file: Path, allowed_targets) -> tuple:
    """The checkpoint's model on the CPU in eval mode, two batches of its input from the run's own data
    (one of data.batch_size and one of another size, for the dynamic batch dimension), and their split."""
    import torch

    from setup.config import check_config
    from setup.parts import build, build_data, build_loaders
    from setup.trust import stored_config
    from store.exported import ExportError
    from store.trained import read_evaluated, trained_model

    ckpt = read_evaluated(file)
    # Data, never code: allowed _target_s only, nothing resolved (setup/trust.py).
    cfg = stored_config(ckpt.config, f"checkpoint {ckpt.path}", allowed_targets)
    cfg.data.num_workers = 0  # one batch is read: workers would only take longer to start
    check_config(cfg)
    cpu = torch.device("cpu")
    splits = build_data(cfg)
    task = build("task", cfg.task)
    model = trained_model(ckpt, cfg, cpu)
    splits, loaders, _ = build_loaders(cfg, splits, cpu)
    split, batch = next(((n, b) for n, loader in (("val", loaders.val), ("test", loaders.test))
                         for b in loader), (None, None))  # fmt: skip
    if batch is None:
        raise ExportError("the run's data has no validation or test sample to check the export on")
    x = task.inputs(batch)
    if not isinstance(x, torch.Tensor):
        raise ExportError(f"the model takes a {type(x).__name__}: export.py exports a model of one tensor")
    x = x if len(x) >= 2 else torch.cat([x, x])  # a batch of 1 would be exported as that size for good
    other = x[: len(x) // 2] if len(x) >= 4 else torch.cat([x, x])
    return model, [x, other], split


if __name__ == "__main__":
    from life.cli import run

    run(main, "export.py", "export")
