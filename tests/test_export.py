"""export.py: every shipped model (conf/model/ on disk, each trained for one batch on the first offline data
and task it fits) exports to each format as docs/export.md's table says, its file read back giving the
model's outputs within 1e-4 on a batch of a size the export never saw; a model that cannot export is told
in one line, exit 2, with nothing written; outputs beyond the tolerance are refused; an existing output is
kept unless overwrite=true; a bad command line (format=onnx without the `export` extra, ...) and --help are
answered without torch."""

from __future__ import annotations

import re

import pytest

from tests.helpers import (
    COMBOS,
    CONF,
    REPO,
    offline,
    options,
    require_extra,
    run_cli,
    train_in_process,
    written,
)

FORMATS = ("onnx", "exported_program")
# One optimizer step and one batch of each split: export needs a checkpoint, not a good model.
TINY = ["trainer.max_epochs=1", "trainer.limit_batches=1", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "data.batch_size=8", "logging.progress_bar=false"]  # fmt: skip


def fitting(model: str) -> tuple[str, str] | None:
    """The first task and offline data that `model` trains on, or None."""
    return next(((t, d) for t, d, m in COMBOS if m == model and offline(d)), None)


MODELS = [m for m in options("model") if fitting(m)]


def cheap(task: str) -> list[str]:
    # A task that writes a text sample at each validation (language modeling) spends most of a tiny run
    # drawing it token by token.
    return ["task.sample_tokens=1"] if "sample_tokens" in written("task", task) else []


def table() -> dict[str, dict[str, bool]]:
    """docs/export.md's table: for each model, whether it exports to each format."""
    text = (REPO / "docs" / "export.md").read_text()
    section = text.split("## Which models export", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|")]  # fmt: skip
    header = [c.strip("`") for c in rows[0]]
    assert header[1:3] == list(FORMATS), header
    return {row[0].strip("`"): {f: row[1 + i] == "yes" for i, f in enumerate(FORMATS)} for row in rows[2:]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny run of a model, trained the first time a test asks for it."""
    made = {}

    def run(model: str):
        if model not in made:
            task, data = fitting(model)
            made[model] = tmp_path_factory.mktemp(model) / "run"
            train_in_process(
                [*TINY, f"task={task}", f"data={data}", f"model={model}", *cheap(task)], made[model]
            )
        return made[model]

    return run


def export_in_process(*overrides: str):
    """export.py's work with its own config composed, in this process (no second torch import)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import export

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("export", overrides=list(overrides))
    return export.export_run(cfg)


def test_each_row_of_the_table_is_a_model_on_disk():
    """A row names a model of conf/ (none deleted, none misspelled). A model without a row, a fork's, is held
    to export to both formats (`table_says`), as docs/export.md says: no row to add for a fork's tests."""
    assert set(table()) <= set(options("model"))


def table_says(model: str) -> dict[str, bool]:
    return table().get(model, dict.fromkeys(FORMATS, True))


def outputs_of(file, fmt: str, x):
    """What the exported file gives for x, read back as a user would: onnxruntime or torch.export.load."""
    import torch
    from torch.utils._pytree import tree_flatten

    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        return [torch.as_tensor(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]
    with torch.no_grad():
        return [
            t for t in tree_flatten(torch.export.load(file).module()(x))[0] if isinstance(t, torch.Tensor)
        ]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_a_shipped_model_exports_as_the_table_says(runs, model, fmt, capfd):
    import torch
    from torch.utils._pytree import tree_flatten

    from setup.parts import build_data, build_loaders
    from store.trained import load_trained
    from system.errors import UserError

    if fmt == "onnx":
        require_extra("onnxruntime", "export")
    run = runs(model)
    out = run / "export" / f"model{'.onnx' if fmt == 'onnx' else '.pt2'}"
    if not table_says(model)[fmt]:
        capfd.readouterr()
        with pytest.raises(UserError) as told:
            export_in_process(f"run={run}", f"format={fmt}")
        message = str(told.value)
        assert "\n" not in message and message.startswith(
            ("the model cannot be exported", "the exported ")
        ), message
        # Nothing else reached the terminal: not torch.export's graph, nor onnxruntime's own error log.
        assert capfd.readouterr() == ("", "")
        assert not (run / "export").exists()  # no file, no temp file, no folder
        return
    assert export_in_process(f"run={run}", f"format={fmt}") == out
    assert out.is_file() and not list(out.parent.glob(".*"))  # no temp file left beside it
    # Read back by the user's runtime, on 3 samples of the run's data (the export saw batches of 8 and 4).
    trained = load_trained(run)
    splits = build_data(trained.cfg)
    _, loaders, _ = build_loaders(trained.cfg, splits, torch.device("cpu"))
    x = trained.task.inputs(next(iter(loaders.val)))[:3]
    with torch.no_grad():
        expected = [t for t in tree_flatten(trained.model(x))[0] if isinstance(t, torch.Tensor)]
    got = outputs_of(out, fmt, x)
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert (
        max((g.double() - e.double()).abs().max().item() for g, e in zip(got, expected, strict=True)) <= 1e-4
    )


def exporting(fmt: str) -> str:
    """The first shipped model that exports to fmt (a project with none skips the test)."""
    found = next((m for m in MODELS if table_says(m)[fmt]), None)
    if found is None:
        pytest.skip(f"no shipped model exports to {fmt}")
    return found


def one_line(proc) -> str:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return lines[0]


@pytest.mark.slow
def test_an_existing_output_is_refused_unless_overwrite(runs, tmp_path):
    model = exporting("exported_program")
    run, out = runs(model), tmp_path / "model.pt2"
    out.write_text("kept")
    proc = run_cli([f"run={run}", "format=exported_program", f"output={out}"], script="export.py")
    assert proc.returncode == 2
    assert f"{out} exists: overwrite=true replaces it" in one_line(proc)
    assert out.read_text() == "kept"
    assert (
        export_in_process(f"run={run}", "format=exported_program", f"output={out}", "overwrite=true") == out
    )
    assert out.read_bytes()[:2] == b"PK"  # an ExportedProgram's zip archive now


def without(tmp_path, *modules: str) -> dict:
    """The environment of a Python where these modules are absent (marked so in sys.modules, as Python
    marks one that failed to import): `import torch` there fails."""
    lines = [f"sys.modules[{m!r}] = None" for m in modules]
    (tmp_path / "sitecustomize.py").write_text("\n".join(["import sys", *lines, ""]))
    return {"PYTHONPATH": str(tmp_path)}


@pytest.mark.parametrize(
    ("args", "hidden", "message"),
    [
        pytest.param(["format=onnx"], "onnxruntime", r"format=onnx needs the `export` extra, and (onnx, onnxscript, )?onnxruntime "
                     r"(is|are) not installed: pip install -e '\.\[export\]'", id="no-extra"),  # all absent without it
        pytest.param(["format=tflite"], None, "format=tflite is not one of: onnx, exported_program", id="format"),
        pytest.param(["format=exported_program", "tolerance=0"], None, "tolerance=0 must be a number above 0",
                     id="tolerance"),
        pytest.param(["format=exported_program", "output={tmp}"], None, "output={tmp} is a directory", id="output"),
    ],
)  # fmt: skip
def test_a_bad_command_line_is_one_line_before_any_work(tmp_path, args, hidden, message):
    """Told before torch is imported (it is absent here) or any file is read."""
    env = without(tmp_path, "torch", *([hidden] if hidden else []))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_cli([f"run={tmp_path / 'nowhere.pt'}", *args], env=env, script="export.py")
    assert proc.returncode == 2
    assert re.search(message.replace("{tmp}", re.escape(str(tmp_path))), one_line(proc))
    assert not (tmp_path / "export").exists()


def test_help_needs_no_torch(tmp_path):
    proc = run_cli(["--help"], env=without(tmp_path, "torch"), script="export.py")
    assert proc.returncode == 0, proc.stderr
    assert "format: ???" in proc.stdout and "python export.py run=" in proc.stdout


@pytest.mark.slow
def test_outputs_beyond_the_tolerance_are_refused_and_the_old_file_kept(runs, tmp_path):
    """ONNX Runtime's kernels are not PyTorch's: their outputs differ in the last bits, which a tolerance
    of 1e-12 refuses; the file that overwrite=true would have replaced stays, and no temp file is left."""
    from system.errors import UserError

    require_extra("onnxruntime", "export")
    model = exporting("onnx")
    out = tmp_path / "model.onnx"
    out.write_text("kept")
    overrides = [f"run={runs(model)}", "format=onnx", f"output={out}", "overwrite=true", "tolerance=1e-12"]
    with pytest.raises(UserError, match=r"differs from the model by up to \S+, more than tolerance=1e-12$"):
        export_in_process(*overrides)
    assert out.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
