"""What `python train.py` trains with no arguments: conf/train.yaml's task, data and model, and its run
length. The benchmarks label their default-run cases with it, so that a label names what the case runs (a
generated project's default is not the template's). No torch here."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def default_run(repo: Path = REPO) -> dict:
    """{"task", "data", "model", "max_epochs"} of the default run (conf/train.yaml, then its trainer)."""
    train = yaml.safe_load((repo / "conf" / "train.yaml").read_text())
    chosen = {}
    for entry in train["defaults"]:
        if isinstance(entry, dict):
            chosen |= entry
    trainer = yaml.safe_load((repo / "conf" / "trainer" / f"{chosen['trainer']}.yaml").read_text())
    epochs = (train.get("trainer") or {}).get("max_epochs", trainer["max_epochs"])
    return {"task": chosen["task"], "data": chosen["data"], "model": chosen["model"], "max_epochs": epochs}


def label(repo: Path = REPO, epochs: bool = False) -> str:
    """E.g. "mlp on digits", or with epochs=True "mlp on digits, 15 epochs"."""
    run = default_run(repo)
    return f"{run['model']} on {run['data']}" + (f", {run['max_epochs']} epochs" if epochs else "")
