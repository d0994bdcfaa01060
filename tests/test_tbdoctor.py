"""scripts/tbdoctor.py on real event files (written by the template's training run and by SummaryWriter),
and against a real TensorBoard holding the port."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from tests.helpers import event_accumulator
from tests.remote_fixtures import (
    DEADLINE,
    ROOT,
    free_port,
    get_json,
    processes_mentioning,
    training_run,  # noqa: F401 (a fixture)
    wait_until,
)

# The log doctor is a script (scripts/tbdoctor.py), not a package module: loaded from its file.
_spec = importlib.util.spec_from_file_location("tbdoctor", ROOT / "scripts" / "tbdoctor.py")
tbdoctor = sys.modules["tbdoctor"] = importlib.util.module_from_spec(_spec)  # (dataclasses look it up)
_spec.loader.exec_module(tbdoctor)
examine, list_runs, main, pick_runs = tbdoctor.examine, tbdoctor.list_runs, tbdoctor.main, tbdoctor.pick_runs


def report(directory, port=None, brief=False) -> tuple[int, str]:
    status, lines = examine(str(directory), port, brief)
    return status, "\n".join(lines)


def test_a_training_run_is_listed_with_its_tags_graph_and_last_step(training_run):  # noqa: F811
    status, text = report(training_run)
    assert status == 0, text
    assert "run tb" in text
    (event_file,) = (training_run / "tb").iterdir()
    assert event_file.name in text
    assert "graph: yes" in text
    scalars = event_accumulator(training_run).Tags()["scalars"]  # the task's own, val/acc or val/miou, ...
    assert "train/loss" in text and f"scalars: {len(scalars)} tags" in text
    assert "last step " in text and "last write " in text
    assert "problem" not in text


def test_images_other_plugins_and_several_runs(tmp_path):
    with SummaryWriter(tmp_path / "a") as writer:
        writer.add_image("samples", torch.zeros(3, 4, 4), global_step=7)
        writer.add_histogram("weights", torch.arange(10.0), global_step=7)
    with SummaryWriter(tmp_path / "b") as writer:
        writer.add_scalar("loss", 1.0, 3)
    status, text = report(tmp_path)
    assert status == 0, text
    assert "run a\n" in text and "run b\n" in text
    assert "images: 1 tags (samples)" in text
    assert "histograms: 1 tags" in text
    assert "last step 7" in text and "last step 3" in text
    assert "2 run(s), 2 with data" in text


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # add_graph traces the model
def test_a_run_that_holds_only_a_graph(tmp_path):
    with SummaryWriter(tmp_path / "run") as writer:
        writer.add_graph(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.zeros(1, 2))
    status, text = report(tmp_path)
    assert status == 0
    assert "graph: yes" in text
    assert "problem: run run holds only a graph" in text


def test_zero_byte_event_file(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.out.tfevents.1.host.1.0").touch()
    status, text = report(tmp_path)
    assert status == 1
    assert "is empty (0 bytes)" in text and "flush" in text
    assert "hold no data yet" in text


def test_a_writer_that_never_logged_leaves_only_the_header(tmp_path):
    writer = SummaryWriter(tmp_path / "run")
    writer.flush()
    try:
        status, text = report(tmp_path)
    finally:
        writer.close()
    assert status == 1
    assert "holds only the file header" in text


def test_a_truncated_last_record_is_reported_and_the_rest_still_read(tmp_path, training_run):  # noqa: F811
    shutil.copytree(training_run / "tb", tmp_path / "run")
    (event_file,) = (tmp_path / "run").iterdir()
    data = event_file.read_bytes()
    event_file.write_bytes(data[:-5])  # as if the writer were in the middle of its last record
    status, text = report(tmp_path)
    assert status == 0
    assert "ends in an incomplete record and was written" in text and "being written now" in text
    assert "corrupt" not in text
    assert "train/loss" in text
    # The same file, untouched for an hour: its writer died before it finished the record.
    os.utime(event_file, (time.time() - 3600, time.time() - 3600))
    _, text = report(tmp_path)
    assert "has not changed for" in text and "writer died" in text


def test_random_bytes_are_corrupt_not_being_written(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.out.tfevents.1.host.1.0").write_bytes(random.Random(0).randbytes(4096))
    status, text = report(tmp_path)
    assert status == 1
    assert "is corrupt: not an event file: bad header (CRC check failed at byte 0)" in text
    assert "not a write in progress" in text
    assert "incomplete record" not in text


def test_a_flipped_byte_fails_the_crc(tmp_path, training_run):  # noqa: F811
    shutil.copytree(training_run / "tb", tmp_path / "run")
    (event_file,) = (tmp_path / "run").iterdir()
    data = bytearray(event_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit rot in the middle of the file
    event_file.write_bytes(bytes(data))
    status, text = report(tmp_path)
    assert "is corrupt:" in text and "CRC check failed" in text
    assert "incomplete record" not in text
    assert status == 0, text  # the records before the damage still hold data


def test_no_event_files_says_so_and_lists_what_is_there(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "train.log").write_text("hello\n")
    status, text = report(tmp_path / "run")
    assert status == 2
    assert "no event files" in text and "You haven't written any data" in text
    assert "checkpoints/" in text and "train.log" in text


def test_missing_directory_lists_the_nearest_existing_parent(tmp_path):
    (tmp_path / "outputs").mkdir()
    status, text = report(tmp_path / "outputs" / "2026-01-01" / "run")
    assert status == 2
    assert f"the nearest existing directory, {tmp_path / 'outputs'}" in text


def test_a_relative_path_resolved_against_another_working_directory(tmp_path, monkeypatch, training_run):  # noqa: F811
    shutil.copytree(training_run, tmp_path / "project" / "outputs" / "run1")
    (tmp_path / "project" / "scripts").mkdir()
    monkeypatch.chdir(tmp_path / "project" / "scripts")  # TensorBoard started from the wrong place
    status, text = report("outputs")
    assert status == 2
    assert f"resolved against the working directory {tmp_path / 'project' / 'scripts'}" in text
    assert "hint: 'outputs' is relative" in text
    assert f"{tmp_path / 'project' / 'outputs'} holds 1 event file(s)" in text


def test_runs_behind_links_are_found_as_tensorboard_finds_them(tmp_path, training_run):  # noqa: F811
    # serve_tb.sh's --run GLOB serves a directory of links to the runs it picked; TensorBoard follows them.
    view = tmp_path / "view"
    (view / "day1").mkdir(parents=True)
    (view / "day1" / "run1").symlink_to(training_run)
    (view / "loop").symlink_to(view)  # a link loop ends
    status, text = report(view, brief=True)
    assert status == 0, text
    assert "1 run(s), 1 with data" in text and "problem" not in text
    assert [line.split()[0] for line in list_runs(view)[1:]] == ["day1/run1"]
    assert pick_runs(view, "run1") == [view / "day1" / "run1"]


def test_another_tensorboard_already_on_the_port(tmp_path, training_run):  # noqa: F811
    other = tmp_path / "someone else's logs"
    shutil.copytree(training_run, other)
    # --port 0: TensorBoard binds a port the system picks and keeps it, then prints it. A port picked here
    # and bound by TensorBoard later could be taken meanwhile by another test (another xdist worker).
    stderr = tmp_path / "tensorboard.stderr"
    with stderr.open("wb") as sink:
        tensorboard = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(other), "--host", "127.0.0.1",
             "--port", "0"],
            stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip

    def serving() -> int | None:
        """TensorBoard's port once it answers there; its exit, with what it said, fails the test."""
        said = stderr.read_text(errors="replace")
        if tensorboard.poll() is not None:
            pytest.fail(f"TensorBoard exited ({tensorboard.returncode}) before serving; its stderr:\n{said}")
        found = re.search(r"at http://127\.0\.0\.1:(\d+)/", said)
        return int(found[1]) if found and answers(int(found[1])) else None

    try:
        try:
            port = wait_until(serving, "TensorBoard to answer", DEADLINE)
        except pytest.fail.Exception as gave_up:
            pytest.fail(f"{gave_up.msg}; its stderr:\n{stderr.read_text(errors='replace')}")
        status, text = report(training_run, port=port, brief=True)
    finally:
        tensorboard.terminate()
        tensorboard.wait(timeout=DEADLINE)
    wait_until(lambda: not processes_mentioning(str(other)), "TensorBoard's data server to exit")
    assert status == 0
    assert f"a TensorBoard is already on port {port}, serving {other}, not {training_run}" in text
    assert "run tb" not in text  # --brief: the summary only
    assert "1 run(s), 1 with data" in text


def test_a_port_taken_by_something_else(training_run):  # noqa: F811
    class NotTensorBoard(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotTensorBoard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _, text = report(training_run, port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert f"port {server.server_address[1]} is taken by another program (not a TensorBoard)" in text


def answers(port):
    try:
        return get_json(f"http://127.0.0.1:{port}/data/environment")
    except OSError:
        return None


@pytest.mark.parametrize("cwd", [ROOT, ROOT / "scripts"], ids=["root", "scripts"])
def test_command_line_exit_status(cwd, tmp_path, training_run):  # noqa: F811
    # Run as a script, from the checkout and from scripts/: nothing there shadows the tensorboard package.
    def run(*args):
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "tbdoctor.py"), *args],
            cwd=cwd, capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip

    good = run(str(training_run), "--port", str(free_port()))
    assert good.returncode == 0, good.stderr
    assert "graph: yes" in good.stdout
    assert run(str(tmp_path)).returncode == 2
    assert run("--help").returncode == 0


def test_main_defaults_to_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--port", str(free_port())]) == 2
    assert f"TensorBoard log doctor: {tmp_path / 'outputs'}" in capsys.readouterr().out


def test_list_runs_and_pick(tmp_path, training_run):  # noqa: F811
    outputs = tmp_path / "outputs"
    shutil.copytree(training_run, outputs / "day1" / "old")
    shutil.copytree(training_run, outputs / "day2" / "new")
    (outputs / "day3" / "fresh" / ".hydra").mkdir(parents=True)
    for path in (outputs / "day1" / "old").rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    lines = list_runs(outputs)
    assert [line.split()[0] for line in lines[1:]] == ["day3/fresh", "day2/new", "day1/old"]
    assert pick_runs(outputs, "latest") == [outputs / "day2" / "new"]
    assert pick_runs(outputs, "day*") == [outputs / "day1" / "old", outputs / "day2" / "new"]
    assert pick_runs(outputs, "old") == [outputs / "day1" / "old"]  # no glob: a substring
    assert pick_runs(outputs, "fresh") == []  # no event files: nothing to serve
