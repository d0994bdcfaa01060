"""FSDP2 and activation checkpointing: what `trainer.strategy=fsdp` and `trainer.activation_checkpointing`
change about the model, done once at set-up, so that the loop's `step` stays the same for every strategy.

A model names its repeated blocks with a method `shard_blocks()` returning modules (the GPT's transformer
blocks, the ResNet's stages, the U-Net's levels, the detector's backbone stages): they are the units that
FSDP gathers one at a time and that activation checkpointing recomputes. A model that names none is sharded
as one unit (said once in the log) and has nothing to checkpoint. docs/scaling.md "Bigger than one GPU".
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from setup.config import ConfigError
from setup.distributed import Distributed, is_fsdp

log = logging.getLogger(__name__)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The blocks `model.shard_blocks()` names; none when it has no such method."""
    named = getattr(model, "shard_blocks", None)
    if named is None:
        return []
    blocks = list(named())
    if not all(isinstance(b, nn.Module) for b in blocks):
        raise ConfigError(f"{type(model).__name__}.shard_blocks() must return modules (docs/scaling.md)")
    return blocks


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 shards this model's parameters over the ranks (its state dict is DTensors)."""
    return is_fsdp(model)


def prepare(model: nn.Module, strategy: str, activation_checkpointing: bool, compile_: bool, precision: str,
            ddp: Distributed) -> nn.Module:  # fmt: skip
    """The model as the run trains it: its blocks' activations recomputed in backward when asked, and under
    torchrun with strategy fsdp sharded block by block, then as a whole (fully_shard changes the module in
    place: the optimizer, built after this, holds the shards). Returns the model itself."""
    blocks = blocks_of(model)
    if activation_checkpointing:
        if not blocks:
            log.info("Activation checkpointing: %s names no shard_blocks(), nothing to recompute",
                     type(model).__name__)  # fmt: skip
        for block in blocks:
            _checkpoint_forward(block)
    if strategy != "fsdp" or ddp.world_size == 1:
        if strategy == "fsdp":
            log.info("trainer.strategy=fsdp on one process: nothing to shard, the model is trained whole")
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 compute and communication of the weights; the gradients are reduced in fp32, where sums of many
    # ranks keep their precision.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" \
        else MixedPrecisionPolicy()  # fmt: skip
    # Each rank drew its own initial weights (its seed is seed + rank): all take rank 0's, as DDP's wrapper
    # does, before each keeps its shard of them.
    for tensor in (*model.parameters(), *model.buffers()):
        torch.distributed.broadcast(tensor.detach(), src=0)
    if not blocks:
        log.info("FSDP: %s names no shard_blocks(); it is sharded as one unit (gathered whole in forward)%s",
                 type(model).__name__, ", and not compiled" if compile_ else "")  # fmt: skip
    for block in blocks:
        if compile_:  # per block, as torchtitan does: the collectives stay between compiled graphs
            block.compile()
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    log.info("FSDP: %d blocks and the root sharded over %d ranks", len(blocks), ddp.world_size)
    return model


def evaluated(model: nn.Module, compile_: bool) -> nn.Module:
    """What validation runs: the compiled model when trainer.compile (a sharded model's blocks are compiled
    already, each on its own)."""
    return torch.compile(model) if compile_ and not is_sharded(model) else model


def _checkpoint_forward(block: nn.Module) -> None:
    """Recompute this block's activations in backward instead of keeping them: its forward, run through
    torch.utils.checkpoint. Set on the instance, so that the state dict's names do not change (a wrapper
    module would add a prefix)."""
    from torch.utils.checkpoint import checkpoint

    block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def full_weights(model: nn.Module) -> dict:
    """Every rank's copy of the whole weights (a collective under FSDP: every rank must call it)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
