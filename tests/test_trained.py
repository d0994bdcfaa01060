"""A trained model from Python (LHT #456, "how to use load_from_checkpoint?"): one call from a checkpoint
or a run directory gives the model with its weights, its task and its config, under eval.py's trust rules."""

import pytest
import torch

from setup.config import ConfigError
from store.checkpoint import CheckpointError, load_checkpoint
from store.trained import load_trained
from tests.helpers import FAST, REFERENCE_RUN, read_metrics, train_in_process

pytestmark = REFERENCE_RUN


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train_in_process([*FAST, "trainer.max_epochs=2"], run_dir)
    return run_dir


def test_a_run_directory_gives_its_best_model_task_and_config(run):
    from setup.parts import build

    trained = load_trained(run)
    assert trained.path == run / "checkpoints" / "best.pt" and not trained.model.training
    assert trained.cfg.model._target_ == "models.mlp.MLP" and trained.task.monitor == "acc"
    # The weights are best.pt's, and the model scores on the test split what the run's own test found.
    saved = load_checkpoint(trained.path)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in trained.model.state_dict().items())
    splits = build("data", trained.cfg.data.dataset)
    images, labels = splits.test.tensors
    with torch.no_grad():
        acc = (
            (trained.task.forward(trained.model, (images, labels)).argmax(1) == labels).float().mean().item()
        )
    assert acc == pytest.approx(read_metrics(run)["test/acc"], abs=1e-6)


def test_a_checkpoint_file_and_the_trust_rules(run, tmp_path):
    assert load_trained(run / "checkpoints" / "last.pt").step == read_metrics(run)["steps"]
    forged = load_checkpoint(run / "checkpoints" / "last.pt")
    forged["config"]["model"]["_target_"] = "os.system"
    torch.save(forged, tmp_path / "forged.pt")
    with pytest.raises(ConfigError, match="not an allowed target"):
        load_trained(tmp_path / "forged.pt")
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        load_trained(tmp_path)
