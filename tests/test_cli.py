"""What a user sees at the command line: a fast --help, and one clear line for every bad input."""

from __future__ import annotations

import pytest

from tests.helpers import FAST, PYTHON, REFERENCE_RUN, REPO, compose_config, needs, options, run_cli, written


def test_help_lists_groups_and_does_not_import_torch():
    import subprocess

    proc = subprocess.run([PYTHON, "-X", "importtime", str(REPO / "train.py"), "--help"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0
    for group in ("task", "model", "data", "optimizer", "scheduler"):  # the options on disk, in Hydra's order
        assert f"{group}: {', '.join(options(group))}" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "hydra" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}, "--help imported torch"


def test_cfg_job_prints_the_composed_config():
    model = options("model")[-1]  # the last on disk, chosen on the command line
    proc = run_cli(["--cfg", "job", f"model={model}"])
    assert proc.returncode == 0
    assert f"_target_: {written('model', model)['_target_']}" in proc.stdout


def assert_clean_failure(proc, *needles):
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output


def test_unknown_model_lists_the_options(tmp_path):
    proc = run_cli(["model=resnet50"], cwd=tmp_path)
    assert_clean_failure(
        proc, "Could not find 'model/resnet50'", "Available options in 'model'", *options("model")
    )


def test_unknown_data_lists_the_options(tmp_path):
    proc = run_cli(["data=imagenet"], cwd=tmp_path)
    assert_clean_failure(proc, "Could not find 'data/imagenet'", *options("data"))


def test_a_typo_in_a_key_of_eval_py_is_one_line(tmp_path):
    """eval.py's config has a value to give (`ckpt: ???`): the hint's walk over its keys must not read it."""
    proc = run_cli(["ckpt=x.pt", "devise=cpu"], cwd=tmp_path, script="eval.py")
    assert_clean_failure(proc, "devise is not a config key (did you mean device?)")
    assert proc.returncode == 2 and len((proc.stdout + proc.stderr).strip().splitlines()) == 1


# Every bad value that the one schema (setup/config.py check_config) refuses: its message, checked on the
# composed config in this process. That the check comes before anything is set up, and that its error is
# one line and exit 2 with nothing written, is the command line's business: the table after this one.
SCHEMA_VALUES = [
    ("+trainer.val_check_interval=0.5", "trainer.val_check_interval is not a config key"),
    (
        "trainer.max_epochs=ten",
        "trainer.max_epochs: Value 'ten' of type 'str' could not be converted to Integer",
    ),
    ("trainer.precision=8", "trainer.precision='8' is not one of: 32, bf16, 16"),
    ("data.batch_size=0", "data.batch_size=0 must be at least 1"),
    ("++data.image_size=0", "data.image_size=0 must be at least 1"),  # ++: a default data without one too
    ("optimizer.lr=fast", "optimizer.lr='fast' is not a number"),
    ("optimizer.lr=inf", "optimizer.lr=inf must be a finite number"),
    ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0 must be greater than 0"),
    ("trainer.grad_clip=-inf", "trainer.grad_clip=-inf must be greater than 0"),
    ("trainer.limit_batches=-1", "trainer.limit_batches=-1 must be at least 1"),
    ("trainer.max_steps=-5", "trainer.max_steps=-5 must be at least 1"),
    ("scheduler.warmup_steps=-5", "scheduler.warmup_steps=-5 must be at least 0"),
    ("trainer.seed=-1", "trainer.seed=-1 must be at least 0"),
    ("trainer.ema_decay=1.5", "trainer.ema_decay=1.5 must be between 0 and 1"),
    ("trainer.ema_decay=0", "trainer.ema_decay=0.0 must be between 0 and 1"),
    ("trainer.ema_decay=-0.1", "trainer.ema_decay=-0.1 must be between 0 and 1"),
    ("trainer.ema_decay=1", "trainer.ema_decay=1.0 must be between 0 and 1"),
    ("trainer.early_stopping.patience=0", "trainer.early_stopping.patience=0 must be at least 1"),
    ("trainer.early_stopping.patience=-3", "trainer.early_stopping.patience=-3 must be at least 1"),
    ("trainer.max_time=abc", "trainer.max_time='abc' must be HH:MM:SS"),
    ("trainer.max_time=1:2", "trainer.max_time='1:2' must be HH:MM:SS"),
]


@pytest.mark.parametrize(("override", "message"), SCHEMA_VALUES)
def test_the_schema_refuses_a_bad_value_in_one_line(override, message, tmp_path):
    from setup.config import ConfigError, check_config

    cfg = compose_config([*FAST, override], tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        check_config(cfg)
    assert message in str(refused.value) and "\n" not in str(refused.value)


# What FSDP's shards cannot do (setup/config.py _check_fsdp): refused by the schema, in one line.
FSDP_REFUSED = [
    ("trainer.ema_decay=0.9", "trainer.ema_decay cannot be used with trainer.strategy=fsdp"),
    ("trainer.precision=16", "trainer.precision=16 cannot be used with trainer.strategy=fsdp: fp16's"),
    ("logging.graph=true", "logging.graph cannot be used with trainer.strategy=fsdp"),
    ("logging.histograms_every_n_epochs=1", "logging.histograms_every_n_epochs cannot be used with"),
]


@pytest.mark.parametrize(("override", "message"), FSDP_REFUSED)
def test_fsdp_refuses_what_its_shards_cannot_do_in_one_line(override, message, tmp_path):
    from setup.config import ConfigError, check_config

    cfg = compose_config([*FAST, "trainer.strategy=fsdp", override], tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        check_config(cfg)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    check_config(compose_config([*FAST, override], tmp_path / "ddp"))  # DDP's to use


# Every other kind of bad value, as a user types it: one line, exit 2, nothing written, before anything is
# set up. A row whose message comes from the data or length of the default run (digits, the MLP) needs it.
BAD_VALUES = [
    ("trainer.max_epoch=3", "trainer.max_epoch is not a config key (did you mean trainer.max_epochs?)"),
    ("+trainer.val_check_interval=0.5", "trainer.val_check_interval is not a config key"),  # the schema's
    ("optimizer.betas=fast", "could not build optimizer (torch.optim.AdamW): TypeError"),
    ("resume=latest", "resume=latest: no unfinished run"),
    ("resume=/nonexistent", "resume=/nonexistent: /nonexistent does not exist"),
    ("init_from=/nonexistent.pt", "/nonexistent.pt"),
    ("init_from_map={encoder.:features.}", "init_from_map renames the keys of init_from's checkpoint"),
    pytest.param("data.num_classes=5", "labels run from 0 to 9, outside 0..4", marks=REFERENCE_RUN),
    pytest.param(
        "model.num_outputs=7", "model outputs of shape [batch, num_classes=10]", marks=REFERENCE_RUN
    ),
    # Checks that need the data's length or the composed parts: still before anything is said or written.
    pytest.param("trainer.val_every_n_steps=1000", "is more than the run's 3 steps", marks=REFERENCE_RUN),
    pytest.param(
        "task=regression",
        "the task reads real targets",
        marks=needs(*REFERENCE_RUN.args, "conf/task/regression.yaml"),
    ),  # fmt: skip
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_a_bad_value_is_one_line_and_leaves_nothing(override, message, tmp_path):
    """The set-up says nothing (run directory, TensorBoard, data sizes) until every check has passed."""
    outputs = tmp_path / "outputs"
    proc = run_cli([*FAST, override, f"paths.output_root={outputs}"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    lines = out.strip().splitlines()  # "[ERROR] ...", or "train.py: error: ..." before the config exists
    assert len(lines) == 1 and message in lines[0], out
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a rejected run left files"


@needs("conf/data/imagefolder.yaml")
def test_missing_imagefolder_path(tmp_path):
    proc = run_cli([*FAST, "data=imagefolder", f"data.dataset.root={tmp_path / 'no_such'}", "data.num_classes=2",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)  # fmt: skip
    assert_clean_failure(proc, f"imagefolder: {tmp_path / 'no_such'} does not exist")


@needs("conf/data/imagefolder.yaml")
def test_imagefolder_without_a_path_says_which_key(tmp_path):
    proc = run_cli([*FAST, "data=imagefolder", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_clean_failure(proc, "data.dataset.root")


@needs("conf/data/cifar10.yaml")
def test_absent_dataset_offline(tmp_path):
    offline = {v: "http://127.0.0.1:9" for v in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    proc = run_cli([*FAST, "data=cifar10", f"paths.data_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path, env={**offline, "no_proxy": "", "NO_PROXY": ""})  # fmt: skip
    assert_clean_failure(proc, f"CIFAR10 is not in {tmp_path / 'cache'} and could not be downloaded")


# Each kind of error a user can fix (system/errors.py UserError, and OmegaConf's), raised where a real run
# or evaluation raises it: the message is the one line told, and the exit code is 2.
NONFINITE_AT_STEP_2 = ["data.dataset._target_=tests.poisoned_data.poisoned_digits", "+data.dataset.position=32",
                       "+data.dataset.seed=${trainer.seed}", "logging.every_n_steps=2"]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "overrides", "message"),
    [
        pytest.param("train.py", ["data.batch_size=0"], "data.batch_size=0 must be at least 1", id="ConfigError"),
        pytest.param(
            "train.py", ["trainer.max_epochs=ten"], "Value 'ten' of type 'str' could not be converted", id="omegaconf"
        ),
        pytest.param(
            "train.py", ["data=csv", "data.path={tmp}/no.csv", "data.target=y"], "csv: {tmp}/no.csv does not exist",
            id="DatasetError", marks=needs("conf/data/csv.yaml"),
        ),
        pytest.param(
            "train.py", ["task.num_classes=1"], "classification needs at least 2 classes, got num_classes=1",
            id="TaskError", marks=REFERENCE_RUN,
        ),
        pytest.param("eval.py", ["ckpt={tmp}/no.pt"], "checkpoint {tmp}/no.pt does not exist", id="CheckpointError"),
        pytest.param(
            "train.py", NONFINITE_AT_STEP_2, "non-finite loss at", id="NonFiniteLossError", marks=REFERENCE_RUN
        ),
    ],
)  # fmt: skip
def test_every_kind_of_user_error_is_one_line_and_exit_2(script, overrides, message, tmp_path):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in overrides]
    fast = FAST if script == "train.py" else []  # eval.py's config has no trainer
    proc = run_cli([*fast, *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, script=script)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    message = message.replace("{tmp}", str(tmp_path))
    told = [line for line in out.splitlines() if message in line or "ERROR" in line]  # eval.py logs plainly
    assert len(told) == 1 and message in told[0], out


def test_a_signal_and_a_bug_end_as_the_shell_expects_and_a_projects_own_error_as_a_user_error():
    """The policy itself (system/errors.py ending): 128 + N for signal N, even behind a library's own error;
    1 and no line for a bug (its traceback tells it); a subclass of UserError that a project adds, exit 2."""
    import signal

    from system.errors import BUG, FULL_ERROR, USER, Interrupted, UserError, ending

    stopped = ending(Interrupted(signal.SIGTERM))
    assert (stopped.code, stopped.line, stopped.stopped.name) == (143, "stopped by SIGTERM", "SIGTERM")
    try:
        try:
            raise Interrupted(signal.SIGINT)
        except Interrupted:
            raise RuntimeError("a library's cleanup failed") from None  # the Interrupted is its context
    except RuntimeError as err:
        assert ending(err).code == 130
    bug = ending(KeyError("x"))
    assert (bug.code, bug.line) == (BUG, None)

    class ProjectError(UserError):
        pass

    own = ending(ProjectError("the first line\nand more"))
    assert (own.code, own.line) == ((BUG, None) if FULL_ERROR else (USER, "the first line"))
