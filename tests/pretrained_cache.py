"""Pretrained weights for the tests, with no download: a seeded model's weights written where the library
looks first, in its real on-disk layout (torch hub's cache for torchvision, the Hugging Face cache for
timm), and the environment that points a run at that cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

REVISION = "0123456789abcdef0123456789abcdef01234567"  # a snapshot's commit, as the Hub names them


def torchvision_weights(directory: Path, weights: str = "IMAGENET1K_V1") -> tuple[dict[str, str], Path]:
    """ResNet-18's file at $TORCH_HOME/hub/checkpoints/<the name in the enum's url> (what torchvision
    reads); the environment and the file."""
    from torchvision import models

    url = models.ResNet18_Weights[weights].url
    path = directory / "torch" / "hub" / "checkpoints" / os.path.basename(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        torch.save(models.resnet18().state_dict(), path)
    return {"TORCH_HOME": str(directory / "torch")}, path


def timm_weights(directory: Path, name: str) -> tuple[dict[str, str], Path]:
    """timm model `name`'s weights in the Hugging Face cache as huggingface_hub leaves a download:
    hub/models--<org>--<repo>/blobs/<sha256>, snapshots/<commit>/<file> linking to it, refs/main naming the
    commit; the environment (offline: the cache only) and the file."""
    import timm
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = directory / "hf" / "hub" / f"models--{cfg.hf_hub_id.replace('/', '--')}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        state = timm.create_model(name, pretrained=False).state_dict()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    staged = repo / "blobs" / "staged"
    save_file({k: v.contiguous() for k, v in state.items()}, str(staged))
    blob = repo / "blobs" / hashlib.sha256(staged.read_bytes()).hexdigest()
    staged.rename(blob)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    link = snapshot / (cfg.hf_hub_filename or "model.safetensors")
    link.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return {"HF_HOME": str(directory / "hf"), "HF_HUB_OFFLINE": "1"}, link


def pretrained_env(cfg, directory: Path) -> dict[str, str]:
    """For a composed config whose model is pretrained, its weights written under `directory`, and the
    environment that finds them; {} for any other model."""
    model = cfg.model
    if not model.get("pretrained"):
        return {}
    target = str(model._target_)
    if target == "models.resnet.resnet18":
        return torchvision_weights(directory, str(model.weights))[0]
    if target == "models.timm_model.timm_model":
        return timm_weights(directory, str(model.name))[0]
    raise AssertionError(f"no test weights for {target}: add a writer to tests/pretrained_cache.py")
