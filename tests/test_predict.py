"""predict.py: each shipped task predicts the first batch of its test split, fed as a user would feed it
(images as a .npy of pixels, a table as a CSV of its feature columns, prompts or sentences to tag as lines
of text), and what it writes, read back, gives the run's own test metrics; bad input stops in one line with
nothing written; a fork's task without a `predict` says which method to add."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import (
    CONF,
    FAST,
    PYTHON,
    REFERENCE_RUN,
    REPO,
    declared,
    first_combo_per_task,
    needs,
    read_metrics,
    train_in_process,
)

# One batch of 32 tested (the test loader is in order: the split's first 32 samples) and validated.
SMALL = [*FAST, "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


def predict_in_process(*args: str):
    """predict.py's own function on the composed conf/predict.yaml, as `python predict.py ARGS` runs it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import predict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("predict", overrides=["device=cpu", "progress_bar=false", *args])
    return predict.predict(cfg)


def run_predict(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [PYTHON, str(REPO / "predict.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def first_test_samples(run, count: int = 32):
    """The run's data config (plain) and the first `count` samples of its test split, rebuilt from the
    config stored in its checkpoint."""
    from setup.parts import build_data
    from store.trained import load_trained

    cfg = load_trained(run).cfg
    test = build_data(cfg).test
    return OmegaConf.to_container(cfg.data, resolve=True), [test[i] for i in range(min(count, len(test)))]


def write_input(data: dict, samples: list, folder) -> tuple:
    """The samples as a user's input file for this kind of data; for tokens, the prompts' lines (None: the
    samples' own lines, when a token's target is not the next token)."""
    kind = data["declares"]["input"]
    if kind == "image":  # pixels in [0, 1]: the data's normalization undone
        x = torch.stack([s[0] for s in samples]).double()
        mean, std = (torch.tensor(data[k], dtype=torch.float64).view(1, -1, 1, 1) for k in ("mean", "std"))
        np.save(folder / "images.npy", (x * std + mean).numpy())
        return folder / "images.npy", None
    if kind == "vector":  # the table's raw values: its standardization undone
        x = torch.stack([s[0] for s in samples]).double()
        x = x * torch.tensor(data["feature_std"]) + torch.tensor(data["feature_mean"])
        with open(folder / "table.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["extra", *data["features"]])  # a column the run does not read: left out
            out.writerows([["x", *map(repr, row)] for row in x.tolist()])
        return folder / "table.csv", None
    if data["declares"]["target"] != "tokens":  # a tag a token: each sample's text a line, its padding
        # (the positions whose target is cross-entropy's ignore_index, -100) left out
        lines = [bytes(s[0][s[1] != -100].tolist()) for s in samples]
        (folder / "lines.txt").write_bytes(b"\n".join(lines) + b"\n")
        return folder / "lines.txt", None
    prompts = ["def main(", "", "import os", "class Point:"]  # the blank line: no prompt
    (folder / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return folder / "prompts.txt", [p for p in prompts if p]


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# How each kind of target's test metric is recomputed from the rows written (a task of a fork's own has
# none here: its rows are counted).
def same_accuracy(rows, samples, data, metrics, folder):
    names = data.get("class_names") or [str(i) for i in range(data["num_classes"])]
    correct = [row["class"] == names[int(s[1])] for row, s in zip(rows, samples, strict=True)]
    assert sum(correct) / len(correct) == pytest.approx(metrics["test/acc"], abs=1e-9)
    assert all(sum(v for k, v in row.items() if k.startswith("prob_")) == pytest.approx(1) for row in rows)


def same_rmse(rows, samples, data, metrics, folder):
    mean, std = data.get("target_mean") or 0.0, data.get("target_std") or 1.0
    errors = [row["prediction"] - (float(s[1][0]) * std + mean) for row, s in zip(rows, samples, strict=True)]
    assert math.sqrt(sum(e * e for e in errors) / len(errors)) == pytest.approx(
        metrics["test/rmse"], rel=1e-4
    )


def same_pixel_accuracy(rows, samples, data, metrics, folder):
    from PIL import Image

    hits = pixels = 0
    for row, (_, mask) in zip(rows, samples, strict=True):
        predicted = torch.from_numpy(np.array(Image.open(folder / row["mask"]))).long()
        hits, pixels = hits + int((predicted == mask).sum()), pixels + mask.numel()
    assert hits / pixels == pytest.approx(metrics["test/pixel_acc"], abs=1e-6)


def same_map50(rows, samples, data, metrics, folder):
    from torchmetrics.detection import MeanAveragePrecision

    classes = list(data["classes"])
    found = [
        {
            "boxes": torch.tensor(row["boxes"]).view(-1, 4),
            "labels": torch.tensor([classes.index(c) for c in row["labels"]], dtype=torch.long),
            "scores": torch.tensor(row["scores"]),
        }
        for row in rows
    ]
    ap = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    ap.update(found, [s[1] for s in samples])
    assert float(ap.compute()["map_50"]) == pytest.approx(metrics["test/map50"], abs=1e-4)


def same_token_scores(rows, samples, data, metrics, folder):
    names = data["class_names"]
    pairs = []  # (true, predicted) tag names of every token
    for row, (_, tags) in zip(rows, samples, strict=True):
        true = [names[t] for t in tags[tags != -100].tolist()]
        assert len(row["tags"]) == len(true)
        pairs += zip(true, row["tags"], strict=True)
    assert sum(t == p for t, p in pairs) / len(pairs) == pytest.approx(metrics["test/acc"], abs=1e-9)
    f1 = []  # each tag's, over the tags that occur in the targets or the predictions
    for name in names:
        hits = sum(t == p == name for t, p in pairs)
        seen = sum(t == name for t, _ in pairs) + sum(p == name for _, p in pairs)
        f1 += [2 * hits / seen] if seen else []
    assert sum(f1) / len(f1) == pytest.approx(metrics["test/f1"], abs=1e-9)


# Each by the column it reads: a task whose rows carry no such column (the contrastive task's embeddings,
# whose kNN metric needs the train split too) has its rows counted.
AGREES = {
    "class": ("class", same_accuracy),
    "real": ("prediction", same_rmse),
    "mask": ("mask", same_pixel_accuracy),
    "boxes": ("boxes", same_map50),
    "tags": ("tags", same_token_scores),
}


@pytest.mark.slow  # five trainings: about 40 s of CPU
@pytest.mark.parametrize(("task", "data", "model"), first_combo_per_task())
def test_each_task_s_predictions_give_its_run_s_test_metrics(task, data, model, tmp_path):
    run = tmp_path / "run"
    train_in_process([*SMALL, f"task={task}", f"data={data}", f"model={model}"], run)
    stored, samples = first_test_samples(run)
    source, prompts = write_input(stored, samples, tmp_path)
    out = predict_in_process(
        f"run={run}", f"input={source}", f"output={tmp_path / 'out.jsonl'}", "max_new_tokens=6"
    )
    rows = read_rows(out)
    if prompts is None:
        assert len(rows) == len(samples)
        column, check = AGREES.get(declared("task", task).get("target"), (None, None))
        if check and all(column in row for row in rows):
            check(rows, samples, stored, read_metrics(run), out.parent)
        return
    # Text: each prompt continued, the same whatever the batches (each prompt has a generator of its own).
    assert [row["prompt"] for row in rows] == prompts
    assert all(row["continuation"] for row in rows)
    again = predict_in_process(
        f"run={run}",
        f"input={source}",
        f"output={tmp_path / 'again.jsonl'}",
        "max_new_tokens=6",
        "batch_size=1",
    )
    assert read_rows(again) == rows


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A run on the csv example table (yes/no labels), for class names, exact agreement and bad tables."""
    from data.csv import write_example

    folder = tmp_path_factory.mktemp("table")
    train_in_process([*SMALL, "data=csv", *write_example(folder)], folder / "run")
    return folder


@needs("conf/data/csv.yaml")
def test_a_table_s_rows_are_predicted_with_its_class_names(table_run, tmp_path):
    from data.splits import split_indices
    from store.trained import load_trained

    with open(table_run / "table.csv") as f:
        rows = list(csv.DictReader(f))
    split = load_trained(table_run / "run").cfg.data.dataset  # the rows of the run's test split, raw
    _, test, _ = split_indices(len(rows), [split.val_fraction, split.test_fraction], split.split_seed)
    first = [rows[i] for i in test[:32].tolist()]
    given = tmp_path / "given.csv"
    with open(given, "w", newline="") as f:
        out = csv.DictWriter(f, list(rows[0]))
        out.writeheader()
        out.writerows(first)
    written = read_csv(
        predict_in_process(f"run={table_run / 'run'}", f"input={given}", f"output={tmp_path / 'p.csv'}")
    )
    assert list(written[0]) == ["input", "class", "prob_no", "prob_yes"]
    assert [r["input"] for r in written] == [f"line {n}" for n in range(2, 34)]
    accuracy = sum(r["class"] == row["label"] for r, row in zip(written, first, strict=True)) / len(first)
    assert accuracy == read_metrics(table_run / "run")["test/acc"]  # the same rows, the same numbers


@needs("conf/data/csv.yaml", "conf/task/regression.yaml")
def test_a_table_s_real_target_is_predicted_in_its_own_units(table_run, tmp_path):
    """Column d of the example table as a real target: the table's standardization of the features and
    of the target, stored in the checkpoint, is what predict.py applies and undoes."""
    from data.splits import split_indices
    from store.trained import load_trained

    run = tmp_path / "run"
    train_in_process(
        [*SMALL, "data=csv", "task=regression", f"data.path={table_run / 'table.csv'}", "data.target=d"], run
    )
    with open(table_run / "table.csv") as f:
        rows = list(csv.DictReader(f))
    split = load_trained(run).cfg.data.dataset
    _, test, _ = split_indices(len(rows), [split.val_fraction, split.test_fraction], split.split_seed)
    first = [rows[i] for i in test[:32].tolist()]
    given = tmp_path / "given.csv"
    with open(given, "w", newline="") as f:
        out = csv.DictWriter(f, ["a", "b", "c"], extrasaction="ignore")  # the features alone
        out.writeheader()
        out.writerows(first)
    written = read_csv(predict_in_process(f"run={run}", f"input={given}", f"output={tmp_path / 'p.csv'}"))
    errors = [float(r["prediction"]) - float(row["d"]) for r, row in zip(written, first, strict=True)]
    rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
    assert rmse == pytest.approx(read_metrics(run)["test/rmse"], rel=1e-5)


@needs("conf/data/imagefolder.yaml")
def test_an_image_folder_s_classes_are_its_folders_names(tmp_path):
    """A folder of class folders, as data=imagefolder reads it, is also an input: each image predicted,
    named by its path, its class named as the folders are."""
    from data.imagefolder import write_example

    overrides = write_example(tmp_path / "images")
    # No DataLoader workers in-process (tests/test_file_data.py): a forked worker of pytest's may hang.
    train_in_process([*SMALL, "data=imagefolder", *overrides, "data.num_workers=0"], tmp_path / "run")
    given, output = f"input={tmp_path / 'images'}", f"output={tmp_path / 'p.csv'}"
    written = read_csv(predict_in_process(f"run={tmp_path / 'run'}", given, output))
    assert [r["input"] for r in written] == sorted(p.relative_to(tmp_path / "images").as_posix()
                                                   for p in (tmp_path / "images").rglob("*.png"))  # fmt: skip
    assert {r["class"] for r in written} <= {"class_0", "class_1"}
    assert list(written[0])[1:] == ["class", "prob_class_0", "prob_class_1"]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    train_in_process(SMALL, run)  # the default run
    return run


def bad_image_folder(folder):
    from PIL import Image

    (folder / "in").mkdir()
    Image.new("L", (8, 8)).save(folder / "in" / "good.png")
    (folder / "in" / "broken.png").write_bytes(b"not a png")
    return folder / "in", "in/broken.png cannot be read as an image"


def empty_folder(folder):
    (folder / "empty").mkdir()
    return folder / "empty", "empty holds no images"


def wrong_array(folder):
    np.save(folder / "x.npy", np.zeros((3, 5, 7), dtype=np.float32))
    return folder / "x.npy", "holds an array of shape [3, 5, 7]; this run's model takes [N, 1, 8, 8]"


def table_without_a_column(folder):
    (folder / "t.csv").write_text("a,b,c\n1,2,3\n")
    return folder / "t.csv", "has no column 'd' (a feature column the run was trained on)"


def a_folder(folder):
    return folder, None


# What is wrong: (the run it is given to, the input it is given, its other options, the one line's words;
# None: the input's maker words it).
BAD = {
    "unreadable image": ("digits", bad_image_folder, [], None),
    "empty folder": ("digits", empty_folder, [], None),
    "array of another shape": ("digits", wrong_array, [], None),
    "table without a feature column": ("table", table_without_a_column, [], None),
    "output that exists": (
        "digits",
        a_folder,
        ["output=exists.csv"],
        "exists.csv exists; pass overwrite=true",
    ),
    "output of no known format": (
        "digits",
        a_folder,
        ["output=out.txt"],
        "out.txt must end in .csv or .jsonl",
    ),
    "run without a checkpoint": ("none", a_folder, [], "holds no checkpoints/best.pt or last.pt"),
}
ON_TABLES = pytest.mark.needs("conf/data/csv.yaml")


@REFERENCE_RUN
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=ON_TABLES) if BAD[c][0] == "table" else c for c in BAD]
)
def test_bad_input_is_one_line_and_writes_nothing(case, digits_run, request, tmp_path, monkeypatch):
    from system.errors import is_user_error

    which, make, extra, words = BAD[case]
    run = {"digits": digits_run, "none": tmp_path}.get(which) or request.getfixturevalue("table_run") / "run"
    source, made_words = make(tmp_path)
    words = words or made_words
    (tmp_path / "exists.csv").write_text("kept\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)  # the output's relative paths land here, as for a user
    with pytest.raises(Exception) as caught:
        predict_in_process(f"run={run}", f"input={source}", *extra)
    assert is_user_error(caught.value), caught.value
    message = str(caught.value)
    assert words in message and len(message.splitlines()) == 1, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written, nothing hidden
    assert (tmp_path / "exists.csv").read_text() == "kept\n"


@REFERENCE_RUN
@pytest.mark.slow
def test_the_command_line_writes_a_csv_and_stops_in_one_line(digits_run, tmp_path):
    from PIL import Image

    (tmp_path / "in" / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (16, 16), color=40 * i).save(tmp_path / "in" / "a" / f"{i}.png")
    done = run_predict([f"run={digits_run}", "input=in"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_csv(tmp_path / "predictions.csv")
    assert [r["input"] for r in rows] == ["a/0.png", "a/1.png", "a/2.png"]
    again = run_predict([f"run={digits_run}", "input=in"], cwd=tmp_path)
    out = again.stdout + again.stderr
    assert again.returncode == 2 and len(out.strip().splitlines()) == 1 and "overwrite=true" in out, out
    replaced = run_predict([f"run={digits_run}", "input=in/a/0.png", "overwrite=true"], cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert [r["input"] for r in read_csv(tmp_path / "predictions.csv")] == ["0.png"]


def test_help_does_not_import_torch():
    probe = "import sys, runpy; sys.argv = ['predict.py', '--help']\ntry:\n    runpy.run_path('predict.py', run_name='__main__')\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    done = subprocess.run([PYTHON, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "predict.py" in done.stdout, done.stdout + done.stderr


@needs("tests/user_task", "conf/data/digits.yaml", "conf/model/mlp.yaml")
@pytest.mark.slow
def test_a_fork_s_task_without_predict_says_which_method_to_add(tmp_path):
    """tests/user_task's multi-label task, dropped into a copy of the template as a user would, trains;
    it defines no `predict`, and predict.py says so in one line."""
    from tests.test_user_task import USER_RUN, user_fork

    fork = user_fork(tmp_path / "fork")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    trained = subprocess.run(
        [PYTHON, "train.py", *USER_RUN, *SMALL, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=fork, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8), dtype=np.float32))
    done = subprocess.run(
        [PYTHON, "predict.py", f"run={tmp_path / 'run'}", f"input={tmp_path / 'x.npy'}"],
        cwd=fork, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 2 and len(out.strip().splitlines()) == 1, out
    assert "MultiLabel cannot predict: add a `predict(self, model, inputs, how)` method" in out, out
    assert not (fork / "predictions.csv").exists()
