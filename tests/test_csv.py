"""data=csv: a user's table trains classification (binary, multiclass) or regression in the target's own
units, found from the file; the split follows the seed; standardization sees the train rows only; a bad
file stops in one line (exit 2); resume and eval.py read the file again."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from tests.helpers import FAST, read_metrics, run_cli, train_in_process

pytestmark = pytest.mark.needs("conf/data/csv.yaml")  # a project without data=csv has no test of it

SHORT = ["data=csv", "logging.progress_bar=false", "data.batch_size=32"]


def write_table(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)
    return path


def table(path, **kw):
    """data/csv.py's dataset function with the config's defaults and the last column as the target (imported here: a project may lack it)."""
    from data.csv import csv as read

    last = path.read_text().splitlines()[0].split(",")[-1]  # the target: the last column, unless named
    args = dict(target_column=last, features=None, target_kind=None, max_classes=20, delimiter=",",
                val_fraction=0.15, test_fraction=0.15, split_seed=0) | kw  # fmt: skip
    return read(path=str(path), **args)


def run_eval(args):
    return run_cli(args, script="eval.py")


def stored_config(run):
    return torch.load(run / "checkpoints" / "best.pt", weights_only=True)["config"]


def test_binary_classification_learns_a_separable_table(tmp_path):
    from data.csv import write_example

    run = tmp_path / "run"
    overrides = write_example(tmp_path / "files")  # label = yes when a > c; an `id` text column
    train_in_process([*SHORT, *overrides, "trainer.max_epochs=4"], run)
    metrics = read_metrics(run)
    assert metrics["test/acc"] >= 0.85, metrics  # chance: about 0.5
    if "test/f1" in metrics:  # the binary metrics of the classification task, where it has them
        assert metrics["test/f1"] >= 0.8, metrics
    data = stored_config(run)["data"]
    assert (
        data["declares"]["target"] == "class"
        and data["num_classes"] == 2
        and data["class_names"] == ["no", "yes"]
    )
    assert data["input_shape"] == [4] and data["features"] == ["a", "b", "c", "d"]  # `id` is text: left out
    assert stored_config(run)["model"]["num_outputs"] == 2


def test_multiclass_text_labels_train_and_keep_a_sorted_order(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    names = np.array(["red", "blue", "green"])[x.argmax(axis=1)]
    path = write_table(
        tmp_path / "colours.csv",
        ["x0", "x1", "x2", "colour"],
        [[*r, c] for r, c in zip(x, names, strict=True)],
    )
    run = tmp_path / "run"
    train_in_process([*SHORT, f"data.path={path}", "data.target=colour", "trainer.max_epochs=6"], run)
    assert read_metrics(run)["test/acc"] >= 0.7  # chance: about 1/3
    data = stored_config(run)["data"]
    assert data["class_names"] == ["blue", "green", "red"] and data["num_outputs"] == 3


def test_the_target_kind_rule_and_its_override(tmp_path):
    from data.splits import split_indices

    labels = [2, 10, 1, 2, 10, 1, 1, 2, 10, 2]
    path = write_table(tmp_path / "t.csv", ["x", "y"], list(enumerate(labels)))
    fractions = dict(val_fraction=0.2, test_fraction=0.2)
    splits = table(path, **fractions)
    # Whole numbers, few of them: classes, with ids in the order of their values (10 after 2, not before).
    assert splits.found["declares"]["target"] == "class" and splits.found["class_names"] == ["1", "2", "10"]
    ids = torch.tensor([{1: 0, 2: 1, 10: 2}[v] for v in labels])
    val, test, train = split_indices(len(labels), [0.2, 0.2], 0)
    for split, rows in ((splits.train, train), (splits.val, val), (splits.test, test)):
        assert torch.equal(split.tensors[1], ids[rows])
    # Said outright, or with fewer classes allowed, the same column is a real.
    real = table(path, target_kind="real", **fractions)
    assert real.found["declares"]["target"] == "real" and real.train.tensors[1].shape == (len(train), 1)
    assert table(path, max_classes=2, **fractions).found["declares"]["target"] == "real"
    # Text is always a class; numbers with a fraction are reals.
    assert table(write_table(tmp_path / "b.csv", ["x", "ok"], [[i, i % 2 == 0] for i in range(10)]),
                 **fractions).found["class_names"] == ["False", "True"]  # fmt: skip
    fractional = write_table(tmp_path / "f.csv", ["x", "y"], [[i, i / 3] for i in range(10)])
    assert table(fractional, **fractions).found["declares"]["target"] == "real"


@pytest.mark.needs("conf/task/regression.yaml")  # stacked on the module's mark: conftest reads both
def test_regression_reports_in_the_target_s_units(tmp_path):
    from data.splits import split_indices

    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 3))
    price = np.round(250_000 + 40_000 * x[:, 0] - 15_000 * x[:, 1] + rng.normal(scale=2_000, size=400), 2)
    path = write_table(tmp_path / "houses.csv", ["rooms", "age", "noise", "price"],
                       [[*r, p] for r, p in zip(x, price, strict=True)])  # fmt: skip
    run = tmp_path / "run"
    train_in_process(
        [*SHORT, f"data.path={path}", "data.target=price", "task=regression", "trainer.max_epochs=15"],
        run,
    )
    metrics, stored = read_metrics(run), stored_config(run)
    data = stored["data"]
    assert data["declares"]["target"] == "real" and data["num_targets"] == 1 and data["num_classes"] is None
    # The target's mean and std are the train rows' (found in the file, in the checkpoint's config).
    val, test, train = split_indices(400, [0.15, 0.15], stored["trainer"]["seed"])
    y = torch.tensor(price)[train]
    assert data["target_mean"] == pytest.approx(float(y.mean()))
    assert data["target_std"] == pytest.approx(float(y.std(correction=0)))
    # The loss is the MSE of the standardized target; rmse is in dollars: the same error, scaled back.
    assert metrics["test/rmse"] == pytest.approx(
        math.sqrt(metrics["test/loss"]) * data["target_std"], rel=1e-4
    )
    assert 1_000 < metrics["test/rmse"] < 0.3 * data["target_std"], metrics  # the mean alone: about 1 std
    assert metrics["test/r2"] > 0.9 and metrics["reference/test_r2_least_squares"] > 0.95  # a linear table


def test_the_split_follows_the_seed(tmp_path):
    from data.csv import write_example

    write_example(tmp_path)
    path = tmp_path / "table.csv"
    a, b, c = table(path, split_seed=3), table(path, split_seed=3), table(path, split_seed=4)
    for name in ("train", "val", "test"):
        for left, right in zip(getattr(a, name).tensors, getattr(b, name).tensors, strict=True):
            assert torch.equal(left, right), name
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    assert len(a.train) + len(a.val) + len(a.test) == 240


def test_standardization_uses_the_train_rows_only(tmp_path):
    from data.splits import split_indices

    n = 100
    val, test, train = split_indices(n, [0.15, 0.15], 0)
    held_out = torch.zeros(n, dtype=torch.bool)
    held_out[torch.cat([val, test])] = True
    # Val and test rows a thousand times larger: statistics that saw them would be far off.
    x = torch.arange(n, dtype=torch.float64) * torch.where(held_out, 1000.0, 1.0)
    y = 3 * x + 7
    path = write_table(
        tmp_path / "t.csv", ["x", "y"], [[f"{a:.1f}", f"{b:.1f}"] for a, b in zip(x, y, strict=True)]
    )
    splits = table(path, target_kind="real")
    features, target = splits.train.tensors
    assert float(features.mean()) == pytest.approx(0, abs=1e-5)
    assert float(features.std(correction=0)) == pytest.approx(1, abs=1e-5)
    assert float(target.mean()) == pytest.approx(0, abs=1e-5)
    mean, std = x[train].mean(), x[train].std(correction=0)
    assert torch.allclose(splits.test.tensors[0][:, 0].double(), (x[test] - mean) / std, rtol=1e-5)
    assert splits.found["target_mean"] == pytest.approx(float(y[train].mean()))
    assert splits.found["target_std"] == pytest.approx(float(y[train].std(correction=0)))


BAD = {
    "a missing file": (None, "no_such.csv", [], "does not exist"),
    "an empty file": ("", "empty.csv", [], "is empty"),
    "a missing column": ("a,b,label\n1,2,yes\n", "t.csv", ["data.target=price"],
                         "has no column 'price' (data.target / data.features); its columns: a, b, label"),
    "a text cell in a feature column": (
        "a,b,label\n" + "".join(f"{i},{i},{'yes' if i % 2 else 'no'}\n" for i in range(3)) + "n/a,3,no\n",
        "t.csv", [], "line 5, column 'a': 'n/a' is not a number",
    ),
    "a target with one class": ("a,label\n1,yes\n2,yes\n3,yes\n", "t.csv", [], "holds one class only ('yes')"),
    "a real target with the default task": (
        "a,label\n" + "".join(f"{i},{i * 0.37:.2f}\n" for i in range(20)), "t.csv", [],
        "the data has real targets: add task=regression",
    ),
    "a class target with task=regression": pytest.param(
        "a,label\n" + "".join(f"{i},{'yes' if i % 2 else 'no'}\n" for i in range(20)), "t.csv",
        ["task=regression"], "the data has class targets: add task=classification",
        marks=pytest.mark.needs("conf/task/regression.yaml"),
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("text", "name", "more", "message"), BAD.values(), ids=BAD)
def test_bad_input_stops_in_one_line(text, name, more, message, tmp_path):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    run = tmp_path / "run"
    proc = run_cli([*FAST, "data=csv", f"data.path={path}", "data.target=label", *more,
                    f"hydra.run.dir={run}"], cwd=tmp_path)  # fmt: skip
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert len(errors) == 1 and message in errors[0], output
    assert not run.exists()  # stopped before training: no run directory left


@pytest.mark.slow
def test_a_csv_run_resumes_and_evaluates_by_reading_the_file_again(tmp_path):
    from data.csv import write_example

    overrides = write_example(tmp_path / "files")
    run = tmp_path / "run"
    train_in_process([*SHORT, *overrides, "trainer.max_epochs=1"], run)
    first = read_metrics(run)
    train_in_process([f"resume={run}", "trainer.max_epochs=2"], run)  # its saved config: the file again
    metrics = read_metrics(run)
    assert metrics["epochs"] == 2 and metrics["steps"] == 2 * first["steps"]

    best = run / "checkpoints" / "best.pt"
    proc = run_eval([f"ckpt={best}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    evaluated = json.loads((best.parent / "metrics.json").read_text())
    assert evaluated["data"] == "csv" and evaluated["test/acc"] == metrics["test/acc"]
    # Another table of the same columns is evaluated; one of other columns is refused in one line.
    lines = (tmp_path / "files" / "table.csv").read_text().splitlines()
    same = tmp_path / "same.csv"
    same.write_text("\n".join(lines[:1] + lines[-60:]) + "\n")
    proc = run_eval([f"ckpt={best}", "data=csv", f"data.path={same}", "data.target=label"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    narrow = write_table(
        tmp_path / "narrow.csv", ["a", "label"], [[i, "yes" if i % 2 else "no"] for i in range(40)]
    )
    proc = run_eval([f"ckpt={best}", "data=csv", f"data.path={narrow}", "data.target=label"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "input_shape=[1], but the checkpoint's model was trained with input_shape=[4]"
        in proc.stdout + proc.stderr
    )
