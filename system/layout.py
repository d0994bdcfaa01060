"""A run directory's layout: the one place that knows where a run keeps each file, and which checkpoint a
path names.

    <run>/checkpoints/best.pt          the best validation's weights and state (what is evaluated)
    <run>/checkpoints/last.pt          the newest state, what a resume goes on from
    <run>/checkpoints/step_XXXXXXXX.pt every trainer.checkpoint_every_n_steps steps
    <run>/checkpoints/last.dcp, ...    the same names, sharded (trainer.strategy=fsdp): links to
    <run>/checkpoints/.shards-<step>-<id>/  a torch.distributed.checkpoint directory, complete once linked
    <run>/metrics.json                 the final test's numbers: a run that has one finished
    <run>/tb/                          TensorBoard's events
    <run>/export/model.onnx, model.pt2 the model exported by export.py (docs/export.md)
    <run>/.hydra/config.yaml           the config the run started with (Hydra's)
    <run>/env.json, <run>/train.log    the environment, the log
    <run>/trackers.json                the MLflow / W&B run ids (logging.trackers), what resume= continues

A module of its own, not part of store/rundir.py: that one names new directories (Hydra's resolvers),
this one says what is inside one. Paths only: no torch and no reading of a checkpoint, so that
store/resume_target.py can use it while Hydra picks the run directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS = "checkpoints"
BEST, LAST = "best.pt", "last.pt"
SHARDED = ".dcp"  # last.pt's sharded twin is last.dcp
METRICS = "metrics.json"
_STEP = re.compile(r"step_(\d+)\.(?:pt|dcp)")
_SHARDS = re.compile(r"\.shards-\d+-[0-9a-f]+")


@dataclass(frozen=True)
class RunDir:
    """The files of the run directory at `path` (which need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}.pt"

    @staticmethod
    def is_step_checkpoint(file: str | os.PathLike) -> bool:
        return bool(_STEP.fullmatch(Path(file).name))

    def step_checkpoints(self) -> list[Path]:
        """The step_<N>.pt files (or .dcp links), oldest (smallest N) first; best.pt and last.pt are never among them."""
        found = [(int(m[1]), p) for p in self.checkpoints.iterdir() if (m := _STEP.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    @staticmethod
    def sharded(file: str | os.PathLike) -> Path:
        """The sharded checkpoint's name for a checkpoint file's: last.pt -> last.dcp."""
        return Path(file).with_suffix(SHARDED)

    @staticmethod
    def is_sharded(path: str | os.PathLike) -> bool:
        return Path(path).suffix == SHARDED

    @staticmethod
    def found(file: str | os.PathLike) -> Path:
        """The checkpoint under this name as it exists: the file, else its sharded twin when that is a
        directory (a link to complete shards), else the name itself (which does not exist)."""
        file, twin = Path(file), RunDir.sharded(file)
        return twin if not file.is_file() and twin.is_dir() else file

    def shard_dir(self, step: int, token: str) -> Path:
        """Where a sharded checkpoint's files are written; its names (last.dcp, ...) link to it."""
        return self.checkpoints / f".shards-{step:08d}-{token}"

    def shard_dirs(self) -> list[Path]:
        return [p for p in self.checkpoints.iterdir() if _SHARDS.fullmatch(p.name)]

    @property
    def metrics(self) -> Path:
        """The final test's numbers; a run whose metrics.json reads back whole finished."""
        return self.path / METRICS

    @staticmethod
    def metrics_beside(checkpoint: str | os.PathLike) -> Path:
        """Where eval.py writes what it measured of a checkpoint: metrics.json in the checkpoint's folder."""
        return Path(checkpoint).parent / METRICS

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    @property
    def export(self) -> Path:
        return self.path / "export"

    def exported(self, suffix: str) -> Path:
        """Where export.py writes the model in one format (`.onnx`, `.pt2`) by default."""
        return self.export / f"model{suffix}"

    @property
    def trackers(self) -> Path:
        """Each experiment tracker's run id (board/trackers.py): a resume logs to the same runs."""
        return self.path / "trackers.json"

    @property
    def hydra_config(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    @property
    def env(self) -> Path:
        return self.path / "env.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    def is_run(self) -> bool:
        """A directory that a run wrote: it holds .hydra/ or checkpoints/."""
        return any(os.path.isdir(self.path / sub) for sub in (".hydra", CHECKPOINTS))

    def evaluated_checkpoint(self) -> Path | None:
        """The checkpoint that evaluating this run means: checkpoints/best.pt, else checkpoints/last.pt (a
        run that never validated), else best.pt or last.pt in the directory itself (a checkpoints/ folder,
        or files copied out of one). None when it holds none of them."""
        for name in (self.best, self.last, self.path / BEST, self.path / LAST):
            candidate = self.found(name)
            if candidate.exists():
                return candidate
        return None

    @classmethod
    def of_checkpoint(cls, file: str | os.PathLike) -> RunDir:
        """The run a checkpoint file belongs to: <run> for <run>/checkpoints/x.pt; the file's own folder for
        a checkpoint kept elsewhere."""
        file = Path(file)
        return cls(file.parent.parent if file.parent.name == CHECKPOINTS else file.parent)

    @classmethod
    def holding(cls, file: str | os.PathLike) -> RunDir | None:
        """The run whose checkpoints/ folder holds `file` (not a hidden temp file); None for a file that lies
        anywhere else."""
        file = Path(file)
        run = cls(file.parent.parent)
        if file.parent.name != CHECKPOINTS or file.name.startswith(".") or not run.is_run():
            return None
        return run

    @classmethod
    def named_by(cls, path: str | os.PathLike) -> RunDir:
        """The run a directory names: itself, or the run whose checkpoints/ folder it is."""
        path = Path(path)
        parent = cls(path.parent)
        return parent if path.name == CHECKPOINTS and parent.is_run() else cls(path)


def checkpoint_to_evaluate(path: str | os.PathLike) -> Path | None:
    """Which checkpoint `path` names when a model is to be evaluated or loaded (eval.py, load_trained,
    init_from=): a file is itself; a directory its evaluated checkpoint (RunDir.evaluated_checkpoint), None
    when it holds none. `~` is expanded."""
    path = Path(os.path.expanduser(str(path)))
    return RunDir(path).evaluated_checkpoint() if path.is_dir() and not RunDir.is_sharded(path) else path
