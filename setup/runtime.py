"""Where and how the math runs: device, precision (autocast and grad scaling), seeding, determinism."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from setup.config import ConfigError

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu."
        )
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool, cudnn_benchmark: bool = False) -> None:
    """Every random stream from `seed`; deterministic kernels, or cudnn's autotuner (trainer.cudnn_benchmark),
    which deterministic runs go without."""
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    if deterministic:
        # cuBLAS needs this set before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def autocast(device: torch.device, precision: str):
    """Mixed-precision forward passes; a no-op context at 32-bit."""
    dtype = PRECISIONS[str(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def fused_on_cuda(node, device: torch.device):
    """An optimizer config's `fused: null` means: the fused kernel on CUDA (one launch updates every
    parameter, instead of a handful per parameter), torch's own default elsewhere. True/false pass through."""
    if "fused" not in node or node.fused is not None or device.type != "cuda":
        return node
    node = node.copy()
    node.fused = True
    return node


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling guards fp16 gradients from underflow; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type, enabled=str(precision) == "16")


def to_device(batch, device: torch.device, channels_last: bool = False):
    """A batch of any structure (tensor, tuple, list, dict) with its tensors on `device`, copied without
    blocking the host; 4-D float tensors (images) in channels_last layout when asked."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def slice_batch(batch, n: int):
    """The first n samples of a batch of any structure."""
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, dict):
        return {k: slice_batch(v, n) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(slice_batch(v, n) for v in batch)
    return batch
