"""The run's parts from its config: task, data, loaders, model, optimizer, schedule, each built by Hydra's
`instantiate` from its `_target_`, and checked against one another before anything trains. train.py,
eval.py and the benchmark build with these, so the three cannot drift apart.

A bad value fails in one line that names the config group; a task that does not fit the data or the model
fails on one real batch, naming the three configs.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from utils.cli import is_user_error, one_line
from utils.config import ConfigError

# Keys of a group's config that say what it takes and gives (the tests pair task, data and model by
# them); they are not parameters of what the group builds.
DECLARATIONS = {"model": ("input", "output"), "task": ("target", "output")}


def build(group: str, node: DictConfig, *args, **kwargs):
    """instantiate(node), then call the result with args for `_partial_` configs (the optimizer gets the
    parameters, the schedule the optimizer). A bad value fails in one line that names the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if group in DECLARATIONS:
        kept = {
            k: v
            for k, v in OmegaConf.to_container(node, resolve=True).items()
            if k not in DECLARATIONS[group]
        }
        node = OmegaConf.create(kept)
    try:
        obj = instantiate(node)
        return obj(*args, **kwargs) if args or kwargs else obj
    except (InstantiationException, TypeError, ValueError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if is_user_error(cause, "data.splits", "tasks.base"):  # the data's or the task's own one line
            raise cause from None
        target = node.get("_target_", "?")
        raise ConfigError(
            f"could not build {group} ({target}): {type(cause).__name__}: {one_line(cause)}"
        ) from None


def build_loaders(cfg: DictConfig, splits, device, rank: int = 0, world_size: int = 1, overfit: int = 0):
    """The train/val/test loaders of data.batch_size per rank, each rank its own shard of each split. With
    trainer.overfit_batches, the same first batches every epoch, validated on themselves."""
    from utils.loaders import build_dataloaders

    note = None
    if overfit:
        from utils.overfit import overfit_splits

        splits, note = overfit_splits(splits, overfit * cfg.data.batch_size * world_size)
    loaders = build_dataloaders(
        splits,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.trainer.seed,
        pin_memory=device.type == "cuda",
        rank=rank,
        world_size=world_size,
        device=device,  # in-memory data is gathered on the GPU, when there is one
    )
    if overfit:
        from utils.overfit import same_batches_every_epoch

        same_batches_every_epoch(loaders.train)
    return splits, loaders, note


def describe(splits, plan, model) -> list[str]:
    """The log lines that say what the run is: its data, its length, its model."""
    sizes = " / ".join(
        f"{len(s)} {name}"
        for name, s in zip(("train", "val", "test"), (splits.train, splits.val, splits.test), strict=True)
    )
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return [
        f"Data: {sizes} samples; {plan.total_steps} optimizer steps over {plan.max_epochs} epochs",
        f"Model: {type(model).__name__}, {params:.2f}M parameters",
    ]


def check_declared(cfg: DictConfig) -> None:
    """What the task, data and model configs declare they take and give must pair up (where they declare
    it: a forker's config may leave it out, and the check on a real batch below still runs)."""
    task, data, model = cfg.task, cfg.data, cfg.model
    names = choices(cfg)
    if "target" in task and task.target != data.target:
        raise ConfigError(
            f"{names}: the task reads {task.target} targets, the data has {data.target} targets"
        )
    if "input" in model and data.input not in model.input:
        raise ConfigError(
            f"{names}: the model takes {'/'.join(model.input)} input, the data gives {data.input}"
        )
    if "output" in model and "output" in task and model.output != task.output:
        raise ConfigError(
            f"{names}: the task needs {task.output} outputs, the model gives {model.output} outputs"
        )


def check_fit(cfg, task, model, splits, loader, device) -> None:
    """The task against one real batch and the model's output on it; the in-memory targets as a whole.
    Lazy modules take their shapes here, before any optimizer, DDP or graph sees the model."""
    import torch

    from utils.runtime import slice_batch, to_device

    try:
        tensors = getattr(splits.train, "tensors", None)
        if tensors is not None and len(tensors) > 1:
            task.check_targets(tensors[-1])
        batch = to_device(slice_batch(next(iter(loader)), 2), device)
        flags = [(m, m.training) for m in model.modules()]
        model.eval()  # no BatchNorm statistics change, no dropout drawn from the training stream
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                output = task.forward(model, batch)
        finally:
            for module, training in flags:
                module.training = training
        task.check(output, batch)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        if is_user_error(err, "tasks.base"):  # the task's own check
            raise ConfigError(f"{choices(cfg)}: {err}") from None
        raise ConfigError(  # the model itself cannot take the batch
            f"{choices(cfg)}: the model fails on a batch of the data: {type(err).__name__}: {one_line(err)}"
        ) from None


def choices(cfg) -> str:
    """`task=... data=... model=...` as chosen on the command line (or their _target_s)."""
    from hydra.core.hydra_config import HydraConfig

    chosen = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}

    def name(group: str) -> str:
        return str(chosen.get(group) or OmegaConf.select(cfg, f"{group}._target_", default="?"))

    return f"task={name('task')} data={name('data')} model={name('model')}"
