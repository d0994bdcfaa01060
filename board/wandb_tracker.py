"""Weights & Biases as a tracker (`logging.trackers=[wandb]`, board/trackers.py): a W&B run.

`logging.wandb.project`, `entity`, `group`, `mode` and `dir` when set, else W&B's own WANDB_PROJECT,
WANDB_ENTITY, WANDB_RUN_GROUP, WANDB_MODE (online, offline, disabled) and WANDB_DIR; with neither, the W&B
files go into the run directory (`<run>/wandb/`), beside the rest of the run. W&B's step only goes up: on a
resume nothing at or below the step W&B already holds is logged (it would drop it with a warning). Offline,
W&B cannot look a run up: a resumed offline run is a second local directory with the same id, which
`wandb sync` uploads into that one run.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

from board.trackers import Tracker as Base
from board.trackers import env_or
from system.errors import ConfigError

PACKAGE = "wandb"
MODES = ("online", "offline", "disabled")


def check(node) -> None:
    mode = node.get("mode")
    if mode is not None and mode not in MODES:
        raise ConfigError(f"logging.wandb.mode={mode!r} is not one of: {', '.join(MODES)} (null: WANDB_MODE)")


class Tracker(Base):
    def start(self, run_id, name, tags, params):
        import wandb

        s = self.settings
        directory = env_or(s.dir, "WANDB_DIR") or str(self.run_dir)
        self.run = wandb.init(
            project=s.project, entity=s.entity, group=s.group, mode=s.mode, dir=directory, name=name,
            tags=tags or None, config=params if run_id is None else None,
            id=run_id, resume="allow" if run_id else None,
        )  # fmt: skip
        if run_id is not None:  # W&B's step only goes up: what it holds is not logged again
            self.held_other = self.held_media = self.run.step - 1
        return self.run.id

    def scalars(self, values, step):
        self.run.log(values, step=step)

    def image(self, tag, png, step):
        import wandb
        from PIL import Image

        self.run.log({tag: wandb.Image(Image.open(io.BytesIO(png)))}, step=step)

    def text(self, tag, text, step):
        import wandb

        self.run.log({tag: wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def end(self, status, final, step, artifacts: list[Path]):
        import wandb

        self.run.summary.update(final)
        if artifacts:
            artifact = wandb.Artifact(f"run-{self.run.id}", type="model")
            for path in artifacts:
                artifact.add_file(
                    str(path), name=f"checkpoints/{path.name}" if path.suffix == ".pt" else path.name
                )
            self.run.log_artifact(artifact)
        if status == "stopped":
            self.run.mark_preempting()  # W&B shows it as preempted: resume= goes on with it
        self.run.finish(exit_code=0 if status == "finished" else 1)
