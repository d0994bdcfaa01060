"""The run's parts from its config: data, task, loaders, model, optimizer, schedule, each built by Hydra's
`instantiate` from its `_target_`, and checked against one another before anything trains. train.py,
eval.py and the benchmark build with these, so the three cannot drift apart. The data comes first: what
only its files know (a table's features and classes) is written into the config that the task and the
model are then built from.

A bad value fails in one line that names the config group; a task that does not fit the data or the model
fails on one real batch, naming the three configs.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from setup.config import ConfigError
from setup.declares import BATCH, DECLARES
from system.errors import UserError, one_line


def build(group: str, node: DictConfig, *args, **kwargs):
    """instantiate(node), then call the result with args for `_partial_` configs (the optimizer gets the
    parameters, the schedule the optimizer). A bad value fails in one line that names the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = without_legacy_declarations(group, node)
    try:
        obj = instantiate(node)
        obj = obj(*args, **kwargs) if args or kwargs else obj
    except (InstantiationException, TypeError, ValueError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if isinstance(cause, UserError):  # the part's own one line (the data's, the task's, the weights')
            raise cause from None
        target = node.get("_target_", "?")
        # A fork's config written for an older template: its declarations inside the group's node.
        legacy = [k for k in DECLARES.get(group, ()) if k in node and f"'{k}'" in str(cause)]
        hint = (
            f"; the declaration {legacy[0]} now goes under declares.{group} (docs/tasks.md)" if legacy else ""
        )
        raise ConfigError(
            f"could not build {group} ({target}): {type(cause).__name__}: {one_line(cause)}{hint}"
        ) from None
    if group == "model" and not _is_module(obj):  # `_partial_: true` gives a function: no weights, no .to()
        hint = ": a model is built whole, without _partial_" if node.get("_partial_") else ""
        raise ConfigError(
            f"could not build model ({node.get('_target_', '?')}): it gave a {type(obj).__name__}, not a "
            f"torch.nn.Module{hint}"
        )
    return obj


def build_optimizer(cfg: DictConfig, model, device):
    """The optimizer of cfg.optimizer over `model`'s parameter groups (optim/params.py: the config's
    `param_groups`, and the function a fork edits), with the fused kernel on CUDA. train.py and the
    benchmark both build theirs here."""
    from optim.params import check_options, head_and_backbone, param_groups
    from setup.runtime import fused_on_cuda

    optimizer = build("optimizer", fused_on_cuda(cfg.optimizer, device), param_groups(model, cfg))
    check_options(optimizer, cfg)
    if OmegaConf.select(cfg, "trainer.freeze_backbone_epochs", default=0):
        head_and_backbone(model)  # a model that names no head stops here, before training
    return optimizer


def build_model(cfg: DictConfig):
    """The model of cfg.model; a resumed run's without reading its pretrained weights (models/pretrained.py):
    the checkpoint's replace them, and the machine may not have the file."""
    from models.pretrained import from_checkpoint

    if cfg.get("resume"):
        with from_checkpoint():
            return build("model", cfg.model)
    return build("model", cfg.model)


def _is_module(obj) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def without_legacy_declarations(group: str, node: DictConfig) -> DictConfig:
    """The node without the declarations that older versions of the template kept inside the model and
    task configs (`model.input`, `model.output`, `task.target`, `task.output`), where the config has no
    `declares` node: a config stored by such a version (a run directory's .hydra/config.yaml, a checkpoint,
    read by resume= and eval.py) must still build, and its keys are no constructor's parameters. A config
    with `declares` is today's: its model and task nodes are passed whole, as `instantiate(cfg.model)` would."""
    from setup.trust import literal

    legacy = [k for k in DECLARES.get(group, ()) if k in node]
    if not legacy or "declares" in node._get_root():
        return node
    kept = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in legacy}
    return OmegaConf.create(literal(kept))  # resolved values stay values: no `${` comes alive again


def build_data(cfg: DictConfig):
    """The data's splits, built before the task and the model: what the dataset found in its files
    (`Splits.found`: csv's number of features, its classes, whether its target is a class or a real) is
    written into cfg.data, where the task and model configs read it (`${data.num_classes}`); the data
    config leaves those keys null. Then the task, data and model declarations must pair up."""
    from setup.trust import literal

    splits = build("data", cfg.data.dataset)
    found = getattr(splits, "found", None) or {}
    with open_dict(cfg.data):
        for key, value in found.items():  # a class name or a column name stays text, never an interpolation
            if isinstance(value, dict):  # a node's keys, as the kind of target in `declares`: the rest kept
                for inner, v in value.items():
                    cfg.data[key][inner] = literal(v)
            else:
                cfg.data[key] = literal(value)
        if found:  # which keys came from the files: a resume checks its config with them against its own
            cfg.data.found_in_files = sorted({*found, *(cfg.data.get("found_in_files") or [])})
    check_declared(cfg)
    return splits


def build_loaders(cfg: DictConfig, splits, device, rank: int = 0, world_size: int = 1, overfit: int = 0):
    """The train/val/test loaders of data.batch_size per rank, each rank its own shard of each split. With
    trainer.overfit_batches, the same first batches every epoch, validated on themselves."""
    from setup.loaders import build_dataloaders

    note = None
    if overfit:
        from setup.overfit import overfit_splits

        splits, note = overfit_splits(splits, overfit * cfg.data.batch_size * world_size)
    collate = cfg.data.get("collate_fn")  # a `_partial_` config: its _target_ is checked like any other
    loaders = build_dataloaders(
        splits,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.trainer.seed,
        pin_memory=device.type == "cuda",
        rank=rank,
        world_size=world_size,
        device=device,  # in-memory data is gathered on the GPU, when there is one
        collate_fn=build("collate_fn", collate) if collate else None,
    )
    if overfit:
        from setup.overfit import same_batches_every_epoch

        same_batches_every_epoch(loaders.train)
    return splits, loaders, note


def describe(splits, plan, model) -> list[str]:
    """The log lines that say what the run is: its data, its length, its model."""
    sizes = " / ".join(
        f"{len(s)} {name}"
        for name, s in zip(("train", "val", "test"), (splits.train, splits.val, splits.test), strict=True)
    )
    params = sum(p.numel() for p in model.parameters()) / 1e6
    found = getattr(splits, "found", None) or {}
    return [
        f"Data: {sizes} samples; {plan.total_steps} optimizer steps over {plan.max_epochs} epochs",
        *([f"Found in the data's files: {shown(found)}"] if found else []),
        f"Model: {type(model).__name__}, {params:.2f}M parameters",
    ]


def shown(found: dict, most: int = 8) -> str:
    """`target=class input_shape=[7] class_names=[no, yes]`: the found keys that are set, long lists cut."""

    def short(value) -> str:
        if not isinstance(value, list):
            return str(value)
        more = f", ... ({len(value)} in all)" if len(value) > most else ""
        return "[" + ", ".join(str(v) for v in value[:most]) + more + "]"

    return " ".join(f"{k}={short(v)}" for k, v in found.items() if v is not None)


def check_declared(cfg: DictConfig) -> None:
    """What the task, data and model configs declare they take and give (`declares.task`, the data's own
    `input` and `target`, `declares.model`) must pair up, where they declare it: a forker's config may
    leave it out (a plain model yaml with no `declares`), and the check on a real batch below still runs."""
    declares = cfg.get("declares") or {}
    task, model = declares.get("task") or {}, declares.get("model") or {}
    data = cfg.data.get("declares") or cfg.data  # an older data config declares beside its keys
    names = choices(cfg)
    if "target" in task and task.target != data.target:
        reading = tasks_reading(data.target)
        hint = f": add {' or '.join(f'task={t}' for t in reading)}" if reading else ""
        raise ConfigError(
            f"{names}: the task reads {task.target} targets, the data has {data.target} targets{hint}"
        )
    if "input" in model and data.input not in model.input:
        raise ConfigError(
            f"{names}: the model takes {'/'.join(model.input)} input, the data gives {data.input}"
        )
    if "output" in model and "output" in task and model.output != task.output:
        raise ConfigError(
            f"{names}: the task needs {task.output} outputs, the model gives {model.output} outputs"
        )
    if task and task.get("batch", BATCH) != data.get("batch", BATCH):
        raise ConfigError(
            f"{names}: the task reads {task.get('batch', BATCH)} batches, the data gives "
            f"{data.get('batch', BATCH)} batches (declares.batch)"
        )
    for group in ("task", "model"):
        if missing := sorted(set(data_keys_read(cfg[group])) - set(cfg.data)):
            raise ConfigError(
                f"{names}: the {group} reads {', '.join(f'data.{k}' for k in missing)}, which this data "
                "config does not have"
            )


def data_keys_read(node) -> list[str]:
    """The data keys a config node interpolates (`${data.block_size}`): what its part needs from the data
    (the pairing rule of tests/helpers.py `compatible` and .copier/parts.jinja `_fits` reads the same)."""
    import json
    import re

    return re.findall(r"\$\{data\.(\w+)", json.dumps(OmegaConf.to_container(node, resolve=False)))


def tasks_reading(target) -> list[str]:
    """The task configs in conf/task/ that read this kind of target (a data config's `target`)."""
    from pathlib import Path

    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "conf" / "task").glob("*.yaml")):
        declared = OmegaConf.load(path)
        kind = OmegaConf.select(declared, "declares.task.target", default=None)
        if kind == target:
            found.append(path.stem)
    return found


def check_fit(cfg, task, model, splits, loader, device) -> None:
    """The task against one real batch: the model's output in eval mode (what evaluation sees, and the
    task's own check of it) and in train mode (the loss: a scalar, or a dict of named scalars), the model
    left as it was (weights, BatchNorm statistics, random streams). Lazy modules take their shapes here,
    before any optimizer, DDP or graph sees the model. A failure is one line that keeps the original
    error's type, message and place (HYDRA_FULL_ERROR=1 shows its traceback)."""
    from setup.runtime import to_device
    from tasks.base import TaskError

    try:
        batch = to_device(next(iter(loader)), device)  # as it comes: a batch is the task's to look into
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as err:
        hint = "; samples that do not stack need data.collate_fn" if "stack" in str(err) else ""
        raise ConfigError(
            f"{choices(cfg)}: the data's loader cannot make a batch: {type(err).__name__}: {one_line(err)}"
            f"{place(err)}{hint}"
        ) from err
    mode = "eval"
    try:
        tensors = getattr(splits.train, "tensors", None)
        if tensors is not None and len(tensors) > 1:
            task.check_targets(tensors[-1])
        task.check(unchanged_forward(task, model, batch, training=False), batch)
        mode = "train"
        check_loss(task.loss(unchanged_forward(task, model, batch, training=True), batch))
    except Exception as err:
        if isinstance(err, TaskError):  # the task's own check
            raise ConfigError(f"{choices(cfg)}: {err}") from err
        if not isinstance(err, (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError)):
            raise
        raise ConfigError(
            f"{choices(cfg)}: the model and task fail on a batch of the data in {mode} mode: "
            f"{type(err).__name__}: {one_line(err)}{place(err)}"
        ) from err


def unchanged_forward(task, model, batch, training: bool):
    """task.forward in train or eval mode, with no gradient, and the model left as it was: its modes, its
    buffers (a train-mode pass moves BatchNorm's statistics) and the random streams (dropout)."""
    import torch

    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.train(training)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return task.forward(model, batch)
    finally:
        for module, was in flags:
            module.training = was
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def check_loss(loss) -> None:
    """The loss contract: a scalar tensor, or a dict of named scalar tensors."""
    import torch

    parts = loss.values() if isinstance(loss, dict) else [loss]
    if not parts or not all(isinstance(x, torch.Tensor) and x.dim() == 0 for x in parts):
        got = {k: getattr(v, "shape", type(v).__name__) for k, v in loss.items()} if isinstance(loss, dict) else (
            getattr(loss, "shape", type(loss).__name__))  # fmt: skip
        raise TypeError(f"task.loss must return a scalar tensor or a dict of them, got {got}")


def place(err: BaseException) -> str:
    """` (at torch/nn/modules/linear.py:125, from tasks/base.py:79)`: where the error was raised, and the
    innermost frame of this project's code that it passed through, when that is another."""
    import traceback
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1]) + "/"
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""

    def short(frame) -> str:
        name = frame.filename.removeprefix(root).rpartition("-packages/")[2]
        return f"{name}:{frame.lineno}"

    own = [f for f in frames if f.filename.startswith(root) and "-packages/" not in f.filename]
    where = short(frames[-1])
    if own and own[-1] is not frames[-1]:
        where += f", from {short(own[-1])}"
    return f" (at {where})"


def choices(cfg) -> str:
    """`task=... data=... model=...` as chosen on the command line (or their _target_s)."""
    from hydra.core.hydra_config import HydraConfig

    chosen = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}

    def name(group: str) -> str:
        return str(chosen.get(group) or OmegaConf.select(cfg, f"{group}._target_", default="?"))

    return f"task={name('task')} data={name('data')} model={name('model')}"
