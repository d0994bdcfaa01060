"""Resume: `python train.py resume=RUN_DIR` continues RUN_DIR from its checkpoints/last.pt, exactly.

The checkpoint carries everything the loop's future depends on: weights, optimizer, schedule, grad scaler,
epoch, step and the batch reached inside the epoch, the RNG streams, the data order and the running
logging window. The run's own config comes back from the checkpoint; on the command line only the keys in
RESUME_OVERRIDES may change (how long to run, where, how to report), since anything else would make the
resumed run a different one. Hydra puts the resumed run into RUN_DIR itself (conf/hydra/default.yaml).
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from setup.config import ConfigError
from setup.trust import literal, read_stored_config, stored_config, unliteral
from store.checkpoint import Checkpoint, CheckpointError, check_data_order, read_checkpoint
from store.resume_target import describe_resume, resume_target
from system.errors import one_line
from system.files import read_json
from system.layout import RunDir

log = logging.getLogger("train")

RESUME_OVERRIDES = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.checkpoint_every_n_steps",
    "trainer.keep_step_checkpoints",
    "trainer.device",
    "logging.progress_bar",
    # Where things are on this machine, and what code it trusts: not what the run is.
    "paths.output_root",
    "paths.multirun_root",
    "paths.data_dir",
    "allowed_targets",
)


@dataclass
class Resume:
    """The run to continue: its directory, the checkpoint, what the checkpoint holds, and its config."""

    run_dir: Path
    checkpoint: Checkpoint
    cfg: DictConfig


def load_resume(cfg: DictConfig, hydra_cfg, requeued: bool = False) -> Resume:
    """The run to continue, with its saved config plus the allowed command-line overrides.

    `resume=` is a run directory (its last.pt), a checkpoint file in one (last.pt, best.pt, step_<N>.pt), or
    `latest`. A SLURM job started again by a requeue (`requeued`) runs its original command, whose
    overrides are the run's own. Raises ConfigError for a path that names no run or for an override that
    would change the run, CheckpointError for a missing, unreadable, unsafe or foreign checkpoint."""
    target = resume_target(str(cfg.resume), str(cfg.paths.output_root))
    run_dir, path = target.run_dir, target.checkpoint
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if output_dir.resolve() != run_dir.resolve():
        raise ConfigError(f"resume={cfg.resume}, but hydra.run.dir is {output_dir}: leave it unset to resume")
    given = {_key(o): o for o in hydra_cfg.overrides.task}
    others = [o for k, o in given.items() if k not in ("resume", *RESUME_OVERRIDES)]
    if others and not requeued:
        raise ConfigError(
            f"resume continues the run with its saved config; only {', '.join(RESUME_OVERRIDES)} may be "
            f"set with it (got: {' '.join(others)}); to start a new run from its weights use init_from="
        )
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist: the run stopped before its first checkpoint; start it again instead"
        )
    ckpt = read_checkpoint(path)  # its fields checked there, for every reader
    # Data, never code: allowed _target_s only, nothing resolved (setup/trust.py).
    saved = stored_config(ckpt.config, f"checkpoint {path}", cfg.get("allowed_targets") or ())
    check_own_run(saved, run_dir, path)
    for key in RESUME_OVERRIDES:
        if key in given:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    if "trainer.max_epochs" in given and "trainer.max_steps" not in given and saved.trainer.max_steps:
        raise ConfigError(
            f"this run's length is trainer.max_steps={saved.trainer.max_steps}, which wins over "
            "trainer.max_epochs: change trainer.max_steps instead"
        )
    saved.resume = str(run_dir)
    OmegaConf.set_struct(saved, True)
    log.info("%s", describe_resume(str(cfg.resume), target, step=ckpt.step))
    return Resume(run_dir=run_dir, checkpoint=ckpt, cfg=saved)


_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
_SELECT = re.compile(r"\$\{oc\.select:([A-Za-z_][\w.]*),([^${}]*)\}")


def yaml_scalar(text: str):
    import yaml

    return yaml.safe_load(text.strip() or "null")


# A run's own config has a few dozen references; a crafted one could double its text at every one
# (`r1: ${r0}${r0}`, ... `r18`): a bounded number of lookups and a bounded length end it in one line.
MAX_LOOKUPS = 10_000
MAX_TEXT = 100_000


class _NoKey(ConfigError):
    """A reference to a key the config lacks: an oc.select takes its default then."""


def _plain_resolved(tree, root=None, depth: int = 0, budget: list | None = None):
    """Resolve the node references (`${data.num_classes}`) of a config read from YAML, with no resolver
    called: a `${name:...}` resolver call raises ConfigError. Enough for a run's own .hydra/config.yaml.
    Text that `literal()` escaped (data found in a user's file) is that text, not a reference."""
    root = tree if root is None else root
    budget = [MAX_LOOKUPS] if budget is None else budget
    if depth > 20:
        raise ConfigError("interpolation loop")
    if isinstance(tree, dict):
        return {k: _plain_resolved(v, root, depth, budget) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_plain_resolved(v, root, depth, budget) for v in tree]
    if not isinstance(tree, str) or "${" not in tree:
        return tree
    escaped = unliteral(tree)
    if escaped is not None:
        return escaped

    def lookup(key: str):
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(f"its interpolations take more than {MAX_LOOKUPS} lookups to resolve")
        node = root
        for part in key.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]  # ${data.input_shape.1}: an item of a list
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise _NoKey(f"${{{key}}} names no key")
        return _plain_resolved(node, root, depth + 1, budget)

    def text_of(key: str) -> str:
        found = str(lookup(key))
        if len(found) > MAX_TEXT:
            raise ConfigError(f"its interpolations make a text longer than {MAX_TEXT} characters")
        return found

    select = _SELECT.fullmatch(tree)  # ${oc.select:key,default}: OmegaConf's own, calls no code
    if select:
        try:
            return lookup(select[1])
        except _NoKey:
            default = yaml_scalar(select[2])  # YAML decodes "\x24\x7b" to "${": never a way to a resolver
            if isinstance(default, str) and "${" in default:
                raise ConfigError(f"{tree!r} calls a resolver") from None
            return default
    whole = _REFERENCE.fullmatch(tree)
    if whole:
        return lookup(whole[1])
    text = _REFERENCE.sub(lambda m: text_of(m[1]), tree)
    if len(text) > MAX_TEXT:
        raise ConfigError(f"its interpolations make a text longer than {MAX_TEXT} characters")
    if "${" in text:
        raise ConfigError(f"{tree!r} calls a resolver")
    return text


def _differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{path}.{k}" if path else str(k)
            out += _differences(a.get(k, "<absent>"), b.get(k, "<absent>"), key)
        return out
    return (
        [] if a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b) else [path]
    )


def check_own_run(saved: DictConfig, run_dir: Path, path: Path) -> None:
    """Refuse a checkpoint that another run wrote (copied in, or a run directory assembled by hand): its
    config must be the run's own .hydra/config.yaml, but for the keys that a resume may change."""
    import yaml

    own_file = RunDir(run_dir).hydra_config
    theirs = OmegaConf.to_container(saved, resolve=True)
    try:  # read with bounds (size, depth, values, no YAML aliases), resolved with bounds (lookups, length)
        own = _plain_resolved(with_found(read_stored_config(own_file), theirs))
    except (OSError, yaml.YAMLError, ConfigError) as err:
        raise CheckpointError(f"{own_file} cannot be read as this run's config ({one_line(err)})") from None
    ignored = ("resume", *RESUME_OVERRIDES)
    diff = [k for k in _differences(own, theirs) if not any(k == i or k.startswith(i + ".") for i in ignored)]
    if diff:
        shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise CheckpointError(
            f"checkpoint {path} belongs to another run: its config differs from {own_file} in {shown}"
        )


def with_found(own, theirs: dict):
    """The run's own config with the data keys its files filled in (setup/parts.py build_data: a table's
    features and classes, listed in data.found_in_files) taken from the checkpoint's config, where they
    were written before the first checkpoint; the run's own .hydra/config.yaml leaves them to the files."""
    data = theirs.get("data") if isinstance(theirs, dict) else None
    found = data.get("found_in_files") if isinstance(data, dict) else None
    if not isinstance(own, dict) or not isinstance(own.get("data"), dict) or not isinstance(found, list):
        return own
    filled = {k: literal(data.get(k)) for k in found if isinstance(k, str)}  # text, never a reference
    return {**own, "data": {**own["data"], **filled, "found_in_files": found}}


def check_can_resume(resume: Resume, loader, total_steps: int, run_dir: Path) -> None:
    """Refuse a run that has nothing left to do, and one whose data order is no longer the saved one."""
    step = resume.checkpoint.step
    # A metrics.json that does not read back whole (left by an older version killed while writing it) is
    # no finished run: its test goes on.
    if step >= total_steps and read_json(RunDir(run_dir).metrics) is not None:
        raise ConfigError(
            f"{run_dir} already finished its {step} steps; to train on, resume it with a larger "
            "trainer.max_epochs or trainer.max_steps"
        )
    check_data_order(resume.checkpoint, loader)


def keep_global_batch(resume: Resume, world_size: int) -> DictConfig:
    """The config to resume with at `world_size` ranks: data.batch_size (per rank) scaled so that the global
    batch, and so each step's samples, stay the saved run's (2 ranks x 8 go on as 1 x 16; setup/loaders.py
    shards a global batch's samples over the ranks). Raises ConfigError when it does not divide."""
    cfg, saved = resume.cfg, resume.checkpoint.world_size
    if not saved or saved == world_size:
        return cfg
    total = cfg.data.batch_size * saved
    if total % world_size:
        raise ConfigError(
            f"{resume.checkpoint.path} was trained on {saved} ranks with a global batch of {total}, which "
            f"{world_size} ranks cannot share equally; resume it on a number of ranks that divides {total}"
        )
    log.info("Resuming %d ranks' run on %d: data.batch_size %d -> %d per rank, the same global batch of %d",
             saved, world_size, cfg.data.batch_size, total // world_size, total)  # fmt: skip
    cfg.data.batch_size = total // world_size
    return cfg


def resume_command(run_dir: Path) -> str:
    return f"python train.py resume={shlex.quote(str(run_dir))}"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")
