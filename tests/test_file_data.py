"""Data that reads files (a data config whose `source` is download or files: mnist, cifar10, your images,
your table) is trained by the suite on a small example in its own on-disk format, written by the function
its config names in `example`, and the run is evaluated by eval.py. The cases are the configs on disk, so a
fork's new file-reading dataset with an `example` is trained here with no edit; one without is skipped,
saying so."""

from __future__ import annotations

import json

import pytest

from tests.helpers import (
    COMBOS,
    FAST,
    declared,
    options,
    read_metrics,
    run_cli,
    train_in_process,
    write_example,
)

FILE_DATA = [d for d in options("data") if declared("data", d).get("source") != "builtin"]


@pytest.mark.slow
@pytest.mark.parametrize("data", FILE_DATA)
def test_file_data_trains_on_its_example_and_evaluates(data, tmp_path):
    source = declared("data", data).get("source")
    overrides = write_example(data, tmp_path / "files")
    if overrides is None:
        pytest.skip(
            f"conf/data/{data}.yaml reads files (source: {source}) but has no `example` key naming a function "
            "that writes a small example of them (see data/csv.py write_example)"
        )
    task, model = next((t, m) for t, d, m in COMBOS if d == data)  # the first task and model it pairs with
    run = tmp_path / "run"
    chosen = [f"task={task}", f"data={data}", f"model={model}"]
    train_in_process([*FAST, *chosen, *overrides, "data.num_workers=0"], run)
    trained = read_metrics(run)
    assert trained["steps"] >= 1 and trained[f"{trained['monitor']}_best"] is not None

    best = run / "checkpoints" / "best.pt"
    proc = run_cli([f"ckpt={best}"], script="eval.py")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    evaluated = json.loads((best.parent / "metrics.json").read_text())
    tested = {k: v for k, v in trained.items() if k.startswith("test/")}
    assert tested and all(evaluated[k] == pytest.approx(v, rel=1e-5, nan_ok=True) for k, v in tested.items())
