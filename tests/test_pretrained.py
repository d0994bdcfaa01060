"""Pretrained weights by name (model=resnet18 model.pretrained=true, model=timm) and the fine-tuning recipe
(experiment=finetune_imagefolder): the weights come from the local cache, written here in its real layout
(tests/pretrained_cache.py), and a run starts from them; their normalization goes into the run's config;
the backbone trains at a scaled lr, frozen for the first epochs, and a run resumed from the frozen epoch
ends, across the switch, where the run never stopped ends (kill -9 itself is model-agnostic: the matrix
of tests/test_resume.py)."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch

from models.pretrained import WeightsError
from store.checkpoint import load_checkpoint
from tests.helpers import compose_config, needs, read_metrics, require_extra, run_cli, train_in_process
from tests.pretrained_cache import timm_weights, torchvision_weights
from tests.test_resume import assert_same

pytestmark = needs("conf/model/resnet18.yaml", "conf/model/simple_cnn.yaml", "conf/data/imagefolder.yaml")
OFFLINE = {
    **{v: "http://127.0.0.1:9" for v in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    **{"no_proxy": "", "NO_PROXY": ""},
}
SHORT = ["logging.progress_bar=false", "data.num_workers=0", "data.batch_size=4", "trainer.limit_batches=3",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]  # fmt: skip


def images(tmp_path) -> list[str]:
    from data.imagefolder import write_example

    return [*write_example(tmp_path / "images"), "data=imagefolder"]


def backbone_equal(model_state: dict, file_state: dict, head: str) -> bool:
    keys = [k for k in file_state if not k.startswith(head) and "running" not in k and "num_batches" not in k]
    return all(torch.equal(model_state[k], file_state[k]) for k in keys)


def test_resnet18_starts_from_the_cached_weights_with_a_new_head(tmp_path, monkeypatch):
    from setup.parts import build

    env, file = torchvision_weights(tmp_path / "cache")
    monkeypatch.setenv("TORCH_HOME", env["TORCH_HOME"])
    saved = torch.load(file, weights_only=True)
    for channels in (3, 1):
        overrides = [
            *images(tmp_path),
            "model=resnet18",
            "model.pretrained=true",
            f"data.in_channels={channels}",
        ]
        model = build("model", compose_config(overrides, tmp_path / "run").model)
        state = model.state_dict()
        assert model.head_prefixes == ("fc.",) and state["fc.weight"].shape == (2, 512)
        assert backbone_equal(state, {k: v for k, v in saved.items() if k != "conv1.weight"}, "fc.")
        want = saved["conv1.weight"] if channels == 3 else saved["conv1.weight"].sum(1, keepdim=True)
        assert torch.equal(
            state["conv1.weight"], want
        )  # the ImageNet stem, its filters fitted to the channels
    with pytest.raises(WeightsError, match=r"model.weights='IMAGENET1K_V3' .*IMAGENET1K_V1"):
        build("model", compose_config([*overrides, "model.weights=IMAGENET1K_V3"], tmp_path / "run").model)


def test_finetune_recipe_freezes_then_trains_and_resumes_across_the_switch(tmp_path, monkeypatch):
    """experiment=finetune_imagefolder: the weights' mean and std in the stored config (image_size, set on
    the command line, kept); the optimizer's groups; the backbone equal to the file's through epoch 0 and
    trained in epoch 1; a run resumed from a step in the frozen epoch 0 ends, across the switch,
    bit-identical."""
    from setup.parts import build, build_optimizer

    env, file = torchvision_weights(tmp_path / "cache")
    monkeypatch.setenv("TORCH_HOME", env["TORCH_HOME"])
    saved = torch.load(file, weights_only=True)
    run = tmp_path / "run"
    args = ["experiment=finetune_imagefolder", *images(tmp_path), *SHORT, "trainer.max_epochs=2",
            "trainer.checkpoint_every_n_steps=2", "logging.images=false"]  # fmt: skip
    train_in_process(args, run)

    ckpt = lambda step: load_checkpoint(run / "checkpoints" / f"step_{step:08d}.pt")  # noqa: E731
    stored = ckpt(2)["config"]["data"]
    assert stored["mean"] == [0.485, 0.456, 0.406] and stored["std"] == [0.229, 0.224, 0.225]
    assert stored["image_size"] == 16 and {"mean", "std"} <= set(stored["found_in_files"])
    assert backbone_equal(ckpt(2)["model"], saved, "fc.")  # epoch 0 (steps 1 to 3): frozen
    assert not backbone_equal(ckpt(4)["model"], saved, "fc.")  # epoch 1's first step: trained

    cfg = compose_config(args, tmp_path / "again")
    model = build("model", cfg.model)
    groups = build_optimizer(cfg, model, torch.device("cpu")).param_groups
    lr, head = cfg.optimizer.lr, {id(p) for p in model.fc.parameters()}
    for g in groups:
        in_head = {id(p) in head for p in g["params"]}
        assert len(in_head) == 1 and g["lr"] == pytest.approx(lr if in_head == {True} else lr * 0.1)
        assert (g["weight_decay"] == 0) == all(p.dim() < 2 for p in g["params"])
    assert len(groups) == 4

    # Resumed from the frozen epoch: the switch happens in the resumed run.
    whole = load_checkpoint(run / "checkpoints" / "last.pt")
    shutil.copyfile(run / "checkpoints" / "step_00000002.pt", run / "checkpoints" / "last.pt")
    (run / "metrics.json").unlink()
    train_in_process([f"resume={run}"], run)
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    for part in ("model", "optimizer", "scheduler", "step", "epoch"):
        assert_same(resumed[part], whole[part], f"resumed from step 2: {part}")


@needs("conf/model/mlp.yaml")  # a model that names no head
def test_a_recipe_on_a_model_without_a_head_or_with_a_bad_scale_is_one_line(tmp_path):
    from setup.config import ConfigError, check_config
    from setup.parts import build, build_optimizer

    for override in ("param_groups.backbone_lr_scale=0.1", "trainer.freeze_backbone_epochs=1"):
        cfg = compose_config(["model=mlp", override], tmp_path / "run")
        with pytest.raises(ConfigError, match=r"MLP declares no head: set `model.head_prefixes = "):
            build_optimizer(cfg, build("model", cfg.model), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"param_groups.backbone_lr_scale=-1 must be a finite number"):
        check_config(compose_config(["param_groups.backbone_lr_scale=-1"], tmp_path / "run"))


def test_absent_weights_offline_is_one_line_naming_the_file_and_its_directory(tmp_path):
    cache = tmp_path / "empty"
    proc = run_cli([*images(tmp_path), "model=resnet18", "model.pretrained=true", f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path, env={**OFFLINE, "TORCH_HOME": str(cache)})  # fmt: skip
    errors = [
        line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line or "error:" in line
    ]
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and f"resnet18-f37072fd.pth is not in {cache}/hub/checkpoints" in errors[0], (
        errors
    )
    assert not (tmp_path / "run").exists() and not any(cache.rglob("*.pth"))


@pytest.mark.slow
def test_timm_model_by_name_trains_from_the_hugging_face_cache(tmp_path, monkeypatch):
    """A timm model's weights in the Hub's cache (offline): the run's backbone, frozen all through, is the
    file's; its head (timm's `classifier`) is new and trained. A name timm does not know, and the cache
    without the file: one line each."""
    require_extra("timm", "timm")
    from safetensors.torch import load_file

    from setup.config import ConfigError
    from setup.parts import build

    env, file = timm_weights(tmp_path / "cache", "convnext_atto")
    args = [*images(tmp_path), "model=timm", "model.name=convnext_atto", "model.pretrained=true", *SHORT,
            "trainer.max_epochs=1", "trainer.freeze_backbone_epochs=1", "data.image_size=32"]  # fmt: skip
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "From the pretrained weights: data.mean=[0.485, 0.456, 0.406]" in proc.stdout
    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert backbone_equal(trained, load_file(str(file)), "head.fc.")
    assert trained["head.fc.weight"].shape == (2, 320) and read_metrics(tmp_path / "run")["steps"] == 3

    with pytest.raises(
        ConfigError, match=r"'convnex_atto' is not a model timm knows \(did you mean convnext_atto"
    ):
        build("model", compose_config([*args, "model.name=convnex_atto"], tmp_path / "r").model)
    # The cache without the file, offline: what HF_HOME and HF_HUB_OFFLINE set when huggingface_hub is imported.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "none" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = os.path.join(tmp_path / "none", "hub", "models--timm--convnext_atto.d2_in1k")
    missing = f"model.safetensors of https://huggingface.co/timm/convnext_atto.d2_in1k is not in {folder} "
    with pytest.raises(WeightsError, match=re.escape(missing)):
        build("model", compose_config(args, tmp_path / "r").model)
