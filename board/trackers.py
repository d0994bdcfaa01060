"""Experiment trackers beside TensorBoard (`logging.trackers=[mlflow]`, `[wandb]`, or both).

TensorBoard's writer stays the one owner of what a run logs: every summary it writes to the event file is
handed on to each tracker as well (`FanOut`, in place of the writer's FileWriter), so a tracker gets the same
scalars at the same steps, the same pictures and texts, and the loop names no tracker. What the event file
does not hold comes here: the config as flattened params at the start; at the end the final metrics, the run
directory's metrics.json and best checkpoint as artifacts (`logging.tracker_artifacts`), and the run's status.

A tracker's run id is kept in the run directory (RunDir.trackers), so `resume=` continues the same tracker
run. No step is logged twice: a tracker told a (key, step) that it already holds drops it. A resume is
bit-identical, so what the killed run logged past its checkpoint is what the resumed run computes again.

A tracker whose call fails (a server gone, a full disk) is warned about once and is off for the rest of the
run: training, TensorBoard and the checkpoints go on. One not installed is refused up front (`check`).

The trackers are the `board/<name>_tracker.py` files on disk, each a `Tracker` subclass and the name of the
package it needs (`PACKAGE`); a project without one of them has one tracker fewer.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
from pathlib import Path

from system.errors import ConfigError
from system.files import read_json, write_json
from system.layout import RunDir

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SUFFIX = "_tracker.py"
TEXT = "/text_summary"  # SummaryWriter.add_text adds it to the tag; a tracker gets the tag as it was given


def known() -> list[str]:
    return sorted(p.name.removesuffix(SUFFIX) for p in HERE.glob(f"*{SUFFIX}"))


def _module(name: str):
    return importlib.import_module(f"board.{name}{SUFFIX.removesuffix('.py')}")


def check(node) -> None:
    """Before anything is built: each tracker named is one of the project's, named once, with its package
    installed (looked for, not imported: importing MLflow takes seconds). Raises ConfigError in one line."""
    names = list(node.get("trackers") or [])
    have = known()
    for name in names:
        if name not in have:
            raise ConfigError(
                f"logging.trackers: {name!r} is not a tracker (known: {', '.join(have) or 'none'})"
            )
        if names.count(name) > 1:
            raise ConfigError(f"logging.trackers names {name} twice")
        package = _module(name).PACKAGE
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logging.trackers=[{name}] needs {package}, which is not installed: pip install -e '.[{name}]'"
            )
        _module(name).check(node.get(name) or {})


class Tracker:
    """One tracker's run. A subclass says how it starts, logs and ends; this class says what is new to it
    and turns it off at its first failure."""

    def __init__(self, name: str, settings, run_dir: Path) -> None:
        self.name, self.settings, self.run_dir = name, settings, run_dir
        self.off = False
        # What the tracker holds: the last step of each scalar (a resumed run's, then each one sent), the
        # last step of a scalar not among them, and of pictures and texts. A step at or below them is not
        # logged again (log_run_end writes the test metrics a second time, at the same step, for HPARAMS).
        self.held: dict[str, int] = {}
        self.held_other = -1
        self.held_media = -1

    # --- What a subclass gives -------------------------------------------------------------------------
    def start(self, run_id: str | None, name: str, tags: list[str], params: dict[str, str]) -> str:
        """Create the tracker's run (run_id None: with these params) or continue run_id (and set `held`);
        returns the run's id."""
        raise NotImplementedError

    def scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def image(self, tag: str, png: bytes, step: int) -> None:
        raise NotImplementedError

    def text(self, tag: str, text: str, step: int) -> None:
        raise NotImplementedError

    def end(self, status: str, final: dict[str, float], step: int, artifacts: list[Path]) -> None:
        """status: finished, stopped (a signal: resume= goes on) or failed."""
        raise NotImplementedError

    # --- Called by FanOut and `tracking` -----------------------------------------------------------------
    def call(self, doing: str, fn, *args):
        if self.off:
            return None
        try:
            return fn(*args)
        except Exception as err:  # any tracker error: none of them may stop training
            self.off = True
            first = (str(err).strip().splitlines() or [""])[0][:200]
            log.warning("%s failed while %s (%s: %s); it is off for the rest of this run, TensorBoard and "
                        "the checkpoints go on", self.name, doing, type(err).__name__, first)  # fmt: skip
            return None

    def key(self, tag: str) -> str:
        """The name the tracker keeps a scalar under (MLflow takes fewer characters than TensorBoard)."""
        return tag

    def new_scalars(self, values: dict[str, float], step: int) -> dict[str, float]:
        return {k: v for k, v in values.items() if step > self.held.get(self.key(k), self.held_other)}


def decode(summary) -> tuple[dict[str, float], list[tuple[str, bytes]], list[tuple[str, str]]]:
    """A TensorBoard Summary's scalars, PNG images and texts; histograms, graphs and HPARAMS stay
    TensorBoard's."""
    scalars, images, texts = {}, [], []
    for value in summary.value:
        kind = value.WhichOneof("value")
        if kind == "simple_value":
            scalars[value.tag] = value.simple_value
        elif kind == "image":
            images.append((value.tag, value.image.encoded_image_string))
        elif (
            kind == "tensor" and value.metadata.plugin_data.plugin_name == "text" and value.tensor.string_val
        ):
            texts.append((value.tag.removesuffix(TEXT), value.tensor.string_val[0].decode(errors="replace")))
    return scalars, images, texts


class FanOut:
    """Stands in for a SummaryWriter's FileWriter: each summary goes to the event file, then to the trackers.
    Everything else (flush, close, add_event, add_graph) is the FileWriter's own."""

    def __init__(self, file_writer, trackers: list[Tracker]) -> None:
        self._file_writer, self.trackers = file_writer, trackers

    def __getattr__(self, name):
        return getattr(self._file_writer, name)

    def add_summary(self, summary, global_step=None, walltime=None) -> None:
        self._file_writer.add_summary(summary, global_step, walltime)
        live = [t for t in self.trackers if not t.off]
        if not live:
            return
        step = int(global_step or 0)
        scalars, images, texts = decode(summary)
        for tracker in live:
            new = tracker.new_scalars(scalars, step)
            if new:
                tracker.call(f"logging scalars at step {step}", tracker.scalars, new, step)
                tracker.held.update(dict.fromkeys(map(tracker.key, new), step))
            for tag, png in images if step > tracker.held_media else ():
                tracker.call(f"logging image {tag}", tracker.image, tag, png, step)
            for tag, text in texts if step > tracker.held_media else ():
                tracker.call(f"logging text {tag}", tracker.text, tag, text, step)


def flat_params(cfg) -> dict:
    """The resolved config as `a.b.c: value` (a list is one value, as JSON: trackers take no lists)."""
    from omegaconf import OmegaConf

    def walk(node, prefix: str):
        for key, value in node.items():
            full = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                yield from walk(value, f"{full}.")
            else:
                yield full, json.dumps(value, default=str) if isinstance(value, (list, dict)) else value

    return dict(walk(OmegaConf.to_container(cfg, resolve=True), ""))


def run_name(run_dir: Path) -> str:
    """The run directory's name; a multirun job's (`<sweep>/3`) with its sweep's."""
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


def _stamp(path: Path):
    with contextlib.suppress(OSError):
        stat = path.stat()
        return stat.st_ino, stat.st_mtime_ns, stat.st_size
    return None


def final_metrics(run: RunDir) -> dict[str, float]:
    values = read_json(run.metrics) or {}
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@contextlib.contextmanager
def tracking(writer, cfg, settings, run_dir, resumed: bool):
    """Each tracker of `settings.trackers` (rank 0: where there is a writer) gets what `writer` writes,
    from its first summary to the end of the block, then the run's end. Nothing at all when none is named."""
    if writer is None or not settings.trackers:
        yield
        return
    run = RunDir(run_dir)
    ids = (read_json(run.trackers) or {}) if resumed else {}
    name, tags = run_name(Path(run_dir)), [str(tag) for tag in cfg.get("tags") or []]
    params = None
    trackers = []
    for tracker_name in settings.trackers:
        tracker = _module(tracker_name).Tracker(tracker_name, getattr(settings, tracker_name), Path(run_dir))
        known_id = ids.get(tracker_name)
        if known_id is None and params is None:
            params = flat_params(cfg)
        run_id = tracker.call("starting its run", tracker.start, known_id, name, tags, params)
        if run_id is not None:
            ids[tracker_name] = run_id
            write_json(run.trackers, ids)  # before training: a run killed at once resumes the same one
            how = "continues" if known_id else "logs to"
            log.info("%s: this run %s %s", tracker_name, how, run_id)
        trackers.append(tracker)
    writer.file_writer = FanOut(writer.file_writer, trackers)
    before = _stamp(run.metrics)
    try:
        yield
    except BaseException as err:  # a signal outside the loop (not an Exception) is a stop: resume= goes on
        status = "failed" if isinstance(err, Exception) else "stopped"
        raise
    else:  # a finished run wrote metrics.json; one stopped by a signal in the loop did not
        status = "finished" if _stamp(run.metrics) not in (before, None) else "stopped"
    finally:
        finished = status == "finished"
        final = final_metrics(run) if finished else {}
        best = run.evaluated_checkpoint()
        artifacts = (
            [run.metrics, *([best] if best else [])] if finished and settings.tracker_artifacts else []
        )
        for tracker in trackers:
            tracker.call("ending its run", tracker.end, status, final, int(final.get("steps", 0)), artifacts)


def env_or(value, *names: str):
    """A config key's value when set, else the first of these environment variables that is."""
    if value is not None:
        return value
    return next((os.environ[n] for n in names if os.environ.get(n)), None)
