"""MLflow as a tracker (`logging.trackers=[mlflow]`, board/trackers.py): a run in an MLflow experiment.

Where: `logging.mlflow.tracking_uri` and `experiment_name` when set, else MLflow's own MLFLOW_TRACKING_URI
and MLFLOW_EXPERIMENT_NAME (or MLFLOW_EXPERIMENT_ID), else MLflow's defaults. Every call is synchronous
(MlflowClient, no fluent global state: the jobs of a multirun in one process each get their own run), so a
failure is seen at the call that failed. MLflow keeps every value logged at a step and cannot delete one:
on a resume, a scalar is logged only past the last step MLflow holds for it (board/trackers.py).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from board.trackers import Tracker as Base
from board.trackers import env_or
from system.errors import ConfigError

PACKAGE = "mlflow"
STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
# What MLflow takes in a metric's or an image's name, and in a param's value; log_batch's param limit.
_NAME = re.compile(r"[^A-Za-z0-9_\-./ ]")
MAX_VALUE, PARAMS_PER_CALL = 6000, 100


def check(node) -> None:
    for key in ("tracking_uri", "experiment_name"):
        value = node.get(key)
        if value is not None and not (isinstance(value, str) and value):
            raise ConfigError(
                f"logging.mlflow.{key}={value!r} must be a non-empty string (null: MLflow's own)"
            )


class Tracker(Base):
    def start(self, run_id, name, tags, params):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=self.settings.tracking_uri)  # None: MLflow's own choice
        if run_id is not None:  # resume=: the same run, each scalar past the last step MLflow holds
            self.run_id = run_id
            for key in self.client.get_run(run_id).data.metrics:
                self.held[key] = max(m.step for m in self.client.get_metric_history(run_id, key))
            self.held_media = max(self.held.values(), default=-1)
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run_tags = {"run_dir": str(self.run_dir), **({"tags": ",".join(tags)} if tags else {})}
        run = self.client.create_run(self._experiment(), run_name=name, tags=run_tags)
        self.run_id = run.info.run_id
        # A param is text: numbers, booleans and null as JSON writes them (3, true, null).
        text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}
        items = [Param(self.key(k), v[:MAX_VALUE]) for k, v in text.items()]
        for i in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_CALL])
        return self.run_id

    def _experiment(self) -> str:
        """The experiment's id, made when it is new (two jobs of a sweep may both try: one makes it)."""
        s = self.settings
        name = env_or(s.experiment_name, "MLFLOW_EXPERIMENT_NAME")
        if name is None:
            return env_or(None, "MLFLOW_EXPERIMENT_ID") or "0"  # MLflow's Default experiment
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except Exception:
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        return found.experiment_id

    def key(self, tag):
        return _NAME.sub("_", tag)

    def scalars(self, values, step):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(self.key(k), float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def image(self, tag, png, step):
        from PIL import Image

        self.client.log_image(self.run_id, Image.open(io.BytesIO(png)), key=_NAME.sub("_", tag), step=step)

    def text(self, tag, text, step):
        self.client.log_text(self.run_id, text, f"text/{_NAME.sub('_', tag)}/step_{step:08d}.md")

    def end(self, status, final, step, artifacts: list[Path]):
        # test/ and val/<monitor>_best came as scalars already: only the rest, once.
        new = {k: v for k, v in final.items() if self.key(k) not in self.held}
        if new:
            self.scalars(new, step)
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path), "checkpoints" if path.suffix == ".pt" else None)
        self.client.set_terminated(self.run_id, STATUS[status])
