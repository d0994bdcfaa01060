"""SIGINT / SIGTERM: finish the step, save last.pt, close TensorBoard, print the resume command, exit
130 / 143. A second signal exits at once. Real runs of train.py, stopped with real signals."""

import contextlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from store.checkpoint import load_checkpoint
from tests.helpers import (
    PYTHON,
    REPO,
    event_accumulator,
    first_quick,
    needs,
    read_metrics,
    run_cli,
    wait_for_children,
    wait_for_line,
    wait_for_moment,
    wait_for_path,
)

ENDLESS = [
    "trainer.max_epochs=1000",
    "data.batch_size=8",
    "logging.every_n_steps=1",
    "logging.progress_bar=false",
]


def start_train(args: list[str], group: bool = False) -> subprocess.Popen:
    """`python train.py ARGS`, its output a pipe; `group`: in a process group of its own, as a terminal's
    foreground job is (a signal to the group reaches its DataLoader workers too)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([PYTHON, str(REPO / "train.py"), *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=group)  # fmt: skip


def start_until(args: list[str], line_pattern: str) -> tuple[subprocess.Popen, list[str]]:
    """Start train.py and read its output until a line matches (the loop is then running, and its handlers
    installed), with a bound: a run that hangs fails the test instead of blocking it."""
    proc = start_train(args)
    try:
        return proc, [wait_for_line(proc, line_pattern)]
    except AssertionError:
        proc.kill()
        raise


def test_a_signal_to_the_main_process_saves_closes_and_prints_the_resume_command(tmp_path):
    """`kill PID`: the signal reaches the main process alone. Every step up to the stop is in TensorBoard."""
    run = tmp_path / "run"
    proc, lines = start_until([*ENDLESS, f"hydra.run.dir={run}"], r"step 30/")
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    assert f"Resume with: python train.py resume={run}" in out
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    stopped = state["step"]
    assert stopped >= 30 and state["epoch"] == 0 and state["batch_in_epoch"] == stopped  # mid-epoch
    # Every step up to the stop is in TensorBoard: the writer was flushed and closed, nothing lost.
    assert [e.step for e in event_accumulator(run).Scalars("train/loss")] == list(range(1, stopped + 1))


def test_second_signal_exits_at_once_without_saving(tmp_path):
    run = tmp_path / "run"
    proc, lines = start_until([*ENDLESS, f"hydra.run.dir={run}"], r"step 5/")
    # Both signals land while the process is stopped, so both are pending when it continues: the first
    # asks for a graceful stop, the second must end the process before the step is over.
    proc.send_signal(signal.SIGSTOP)
    os.waitpid(proc.pid, os.WUNTRACED)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    out = "".join(lines) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, out
    assert "SIGTERM again: exiting now, without saving" in out
    assert "Resume with" not in out
    assert not (run / "checkpoints" / "last.pt").exists()  # no epoch ended, nothing saved


LANDS_IN_A_LIBRARYS_CLEANUP = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from life.cli import run

def main():
    state = {{"flags": object()}}
    try:
        try:
            os.kill(os.getpid(), signal.{signal})  # lands here, inside the library's work
        finally:  # the library's cleanup trips over the state the signal left half-done
            state["flags"] = None
            state["flags"].restore()
    finally:
        pass

run(main, "train.py", "train")
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_librarys_cleanup_is_still_one_line(signum):
    """What CI saw once: Ctrl-C inside OmegaConf's flag_override during Hydra's compose came out as
    OmegaConf's AttributeError (the Interrupted as its context), a 40-line traceback and exit 1."""
    script = LANDS_IN_A_LIBRARYS_CLEANUP.format(repo=str(REPO), signal=signum.name)
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signum, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"train.py: stopped by {signum.name} before it started: nothing to save."
    ], done.stderr


DROPPED_BY_A_LIBRARY = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from life.cli import run
from system.signals import StopSignals

def main():
    try:  # a library call that drops every error, as C code that clears a pending one does
        os.kill(os.getpid(), signal.{signal})
        sum(range(1000))
    except BaseException:
        pass
    if {loop}:
        StopSignals()  # the training loop starts: it must not
        print("trained", flush=True)

run(main, "train.py", "train")
"""


@pytest.mark.parametrize("loop", [True, False], ids=["before the loop", "at the end"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_that_a_library_drops_still_stops_the_run(signum, loop):
    """What the load test caught: a Ctrl-C during data set-up raised inside a library that swallowed it, and
    training went on for its 1000 epochs. The loop's start honours it; so does the end of the program."""
    script = DROPPED_BY_A_LIBRARY.format(repo=str(REPO), signal=signum.name, loop=loop)
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signum, done.stdout + done.stderr
    assert "trained" not in done.stdout and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"train.py: stopped by {signum.name}"), done.stderr


LANDS_IN_A_LOG_WRITE = """
import json, logging, os, signal, sys
sys.path.insert(0, {repo!r})
from system.signals import StopSignals

class File:
    \"\"\"A log file that refuses a write inside its own flush, as io.BufferedWriter does ("reentrant call").\"\"\"
    def __init__(self):
        self.lines, self.busy, self.send = [], False, []
    def write(self, text):
        if self.busy:
            raise RuntimeError("reentrant call inside File")
        self.lines.append(text)
    def flush(self):
        self.busy = True
        for signum in self.send:  # the signal lands while the flush is in flight
            os.kill(os.getpid(), signum)
        self.send.clear()
        self.busy = False

file = File()
logging.getLogger().addHandler(logging.StreamHandler(file))
logging.getLogger().setLevel(logging.INFO)
log = logging.getLogger("train")
signals = StopSignals()
file.send.append(signal.SIGTERM)
log.info("a line the signal breaks into")
log.info("the loop's next line")
print(json.dumps([signals.requested, [line.strip() for line in file.lines]]), flush=True)
file.send.append(signal.SIGTERM)
log.info("a line the second signal breaks into")
print("not reached", flush=True)
"""


def test_a_signal_inside_a_log_write_is_said_after_it():
    """What CI saw once: SIGUSR1 landed while train.log was being flushed; the handler's own log line was
    refused inside it, and logging printed a 60-line traceback. The line now waits for the loop to read
    the flag; a second signal there still exits at once, its line written to stderr unbuffered."""
    script = LANDS_IN_A_LOG_WRITE.format(repo=str(REPO))
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stdout + done.stderr
    requested, logged = json.loads(done.stdout.splitlines()[0])
    assert requested and logged == [
        "a line the signal breaks into",
        "the loop's next line",
        "SIGTERM: finishing the current step, then saving checkpoints/last.pt "
        "(send it again to exit at once, without saving).",
    ], logged
    assert done.stderr == "SIGTERM again: exiting now, without saving.\n", done.stderr
    assert "not reached" not in done.stdout


# --- Every phase, the signal sent as its sender sends it ------------------------------------------------
# A terminal's Ctrl-C reaches the whole foreground process group, and SLURM's scancel or preemption every
# process of the job step: DataLoader workers included. Each run here is its own process group (as a
# foreground job is) with two workers per loader, and the signal goes to the group.

WORKERS = [
    "task=classification",
    "data=fake",
    "model=mlp",
    "data.num_workers=2",
    "data.batch_size=8",
    "data.dataset.train_size=128",
    "data.dataset.val_size=64",
    "data.dataset.test_size=64",
    "logging.progress_bar=false",
    "logging.every_n_steps=1",
]
# In a generated project without these parts the tests of this section are not collected.
WORKER_RUN = needs("conf/task/classification.yaml", "conf/data/fake.yaml", "conf/model/mlp.yaml")


def stop_at(args: list[str], moment, signum: int) -> tuple[subprocess.Popen, str]:
    """Start a run in its own process group, wait until `moment(proc)` says it is there, signal the group;
    the ended process and everything it printed."""
    proc = start_train(args, group=True)
    try:
        seen = moment(proc)
    except AssertionError:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, signal_group(proc, signum, seen)


def signal_group(proc: subprocess.Popen, signum: int, seen: str) -> str:
    """The signal to every process of the run's group; everything the run printed."""
    os.killpg(proc.pid, signum)
    return seen + proc.communicate(timeout=240)[0]


def assert_clean(out: str) -> None:
    """No worker died of it and no traceback: the run told what happened in its own lines."""
    for sign in ("Traceback", "exited unexpectedly", "Interrupted", "Exception ignored"):
        assert sign not in out, out


def steps_of(path: Path) -> int:
    return load_checkpoint(path)["step"]


def moment_loop(proc, run):  # the loop runs
    return wait_for_line(proc, r"step 3/")


def moment_first_batch(proc, run):  # the training loader's workers are up: the first batch and its graph
    wait_for_children(proc.pid, 4)  # the validation loader's two (the check before training), then these
    return ""


def moment_validation(proc, run):  # the run's last step is done: validation of a large split follows
    return wait_for_line(proc, r"step 3/3 ")


def moment_checkpoint_write(proc, run):  # a checkpoint of 150 MB is being written
    wait_for_path(proc, str(run / "checkpoints" / ".last.pt.*.tmp"))
    return ""


PHASES = {
    "training": (moment_loop, ["trainer.max_epochs=1000"]),
    "first batch with the graph": (moment_first_batch, ["trainer.max_epochs=1000", "logging.graph=true"]),
    "validation": (
        moment_validation,
        ["trainer.max_epochs=1", "trainer.limit_batches=3", "data.dataset.val_size=4000"],
    ),
    "checkpoint write": (
        moment_checkpoint_write,
        [
            "trainer.max_epochs=1000",
            "model=mlp",
            "model.hidden_dims=[4096]",
            "trainer.checkpoint_every_n_steps=1",
        ],
    ),
}


# Each phase with one of the two senders (both stop every phase alike; each sender is tested twice).
SENDERS = {"training": "ctrl-c", "first batch with the graph": "scancel", "validation": "scancel",
           "checkpoint write": "ctrl-c"}  # fmt: skip
SIGNALS = {"ctrl-c": signal.SIGINT, "scancel": signal.SIGTERM}


@WORKER_RUN
@pytest.mark.parametrize("phase, sender", first_quick(SENDERS.items()))
def test_a_signal_to_the_group_saves_last_pt_and_resume_finishes(tmp_path, phase, sender):
    moment, args = PHASES[phase]
    signum = SIGNALS[sender]
    run = tmp_path / "run"
    proc, out = stop_at([*WORKERS, *args, f"hydra.run.dir={run}"], lambda proc: moment(proc, run), signum)
    assert proc.returncode == 128 + signum, out
    assert_clean(out)
    assert f"Stopped by {signal.Signals(signum).name} at step" in out, out
    last = run / "checkpoints" / "last.pt"
    stopped = steps_of(last)  # whole: it loads
    assert stopped >= 1 and not list((run / "checkpoints").glob(".*.tmp")), out
    if phase == "validation":  # the step in flight was the run's last: the validation did not count
        state = load_checkpoint(last)
        assert (state["epoch"], state["batch_in_epoch"], stopped) == (0, 3, 3), out  # before the validation
        assert "val acc" not in out and not (run / "checkpoints" / "best.pt").exists(), out
    # The resume command it printed goes on from the step in flight, to the run's end.
    more = [] if phase == "validation" else [f"trainer.max_steps={stopped + 2}"]
    done = run_cli([f"resume={run}", *more])
    assert done.returncode == 0, done.stdout + done.stderr
    if phase == "validation":  # the validation the signal stopped runs again, then the test
        assert (
            "epoch 0 step 3: val" in done.stdout + done.stderr and (run / "checkpoints" / "best.pt").exists()
        )
    assert read_metrics(run)["steps"] == (3 if phase == "validation" else stopped + 2)


@pytest.mark.slow
@WORKER_RUN
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_during_the_final_test_stops_it_within_a_batch(tmp_path, signum):
    """The test's workers ignore it, the main process stops after the batch in flight: no test result, best.pt
    and last.pt kept, and the resume command finishes the test."""
    run = tmp_path / "run"
    args = [*WORKERS, "trainer.max_epochs=1", "trainer.limit_batches=3", "data.dataset.test_size=4000"]
    proc, out = stop_at([*args, f"hydra.run.dir={run}"],
                        lambda proc: wait_for_line(proc, r"Testing best\.pt on the test split"), signum)  # fmt: skip
    assert proc.returncode == 128 + signum, out
    assert_clean(out)
    assert f"Stopped by {signal.Signals(signum).name} during the final test: the test was skipped" in out, out
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert not (run / "metrics.json").exists()
    if signum == signal.SIGUSR1:
        return  # no SLURM here: its requeue says so in a line; resuming is the SIGTERM case's
    done = run_cli([f"resume={run}"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_metrics(run)["steps"] == 3


@pytest.mark.slow
@WORKER_RUN
def test_a_signal_as_the_run_ends_leaves_a_whole_finished_run(tmp_path):
    """After the test's last batch nothing is left to stop: metrics.json is whole, the run finished."""
    run = tmp_path / "run"
    args = [*WORKERS, "trainer.max_epochs=1", "trainer.limit_batches=3", f"hydra.run.dir={run}"]
    proc, out = stop_at(args, lambda proc: wait_for_line(proc, r"Test: "), signal.SIGTERM)
    assert proc.returncode in (0, 143), out  # the process may have ended before the signal came
    assert_clean(out)
    assert read_metrics(run)["steps"] == 3
    again = run_cli([f"resume={run}"])
    assert again.returncode == 2 and "already finished its 3 steps" in again.stdout + again.stderr


# From the first handler to the loop's start, each with one of the stop signals in turn (SIGUSR1 first: its
# default action would end the process without a word); none needs the machine to be quiet.
START_UP = ["handlers installed", "torch importing", "hydra composed", "Run directory:", r"Data: \d+ train"]


@WORKER_RUN
@pytest.mark.parametrize("moment, signum", [
    (moment, (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM)[i % 3]) for i, moment in enumerate(START_UP)
])  # fmt: skip
def test_a_signal_during_start_up_is_one_line_and_leaves_no_directory(tmp_path, moment, signum):
    outputs = tmp_path / "outputs"

    def there(proc) -> str:
        if moment == "hydra composed":  # Hydra has made the run's directory and written .hydra/ into it
            wait_for_path(proc, str(outputs / "*" / "*" / ".hydra" / "config.yaml"))
            return ""
        return wait_for_moment(proc, moment)

    proc, out = stop_at([*WORKERS, "trainer.max_epochs=1000", f"paths.output_root={outputs}"], there, signum)
    assert proc.returncode == 128 + signum, out
    assert_clean(out)
    # The stop is the last word: nothing (torch's exit-time INFO lines, say) follows it, but SLURM's requeue
    # after its warning signal (here: "Not requeued", no SLURM).
    lines = [line for line in out.strip().splitlines() if "requeue" not in line.lower()]
    assert f"stopped by {signal.Signals(signum).name}" in lines[-1] and "nothing to save" in lines[-1], out
    left = [p for p in outputs.rglob("*") if p.is_file()] if outputs.exists() else []
    assert not left, left


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in process_tree(int(child)))]


def rank_pid(launcher: int, rank: int) -> int:
    """The process of torchrun's rank `rank` (its RANK variable; its DataLoader workers, below it, share it)."""
    for pid in process_tree(launcher)[1:]:
        with contextlib.suppress(OSError):
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
    raise AssertionError(f"torchrun {launcher} has no rank {rank}")


# Who a torchrun launch's stop signal reaches: SLURM's scancel or a preemption signals every process of the
# job step at once; `kill PID` or a container's eviction reaches one rank alone, the others not at all.
SENDERS = ("every process", "rank 1 alone")


def send(proc: subprocess.Popen, sender: str, signum: int) -> None:
    """`signum` to torchrun's processes as `sender` (one of SENDERS) sends it."""
    pids = process_tree(proc.pid) if sender == "every process" else [rank_pid(proc.pid, 1)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def assert_every_rank_stopped(proc: subprocess.Popen, out: str, run: Path, sender: str, signum: int) -> int:
    """Both ranks of torchrun `proc` stopped for `signum` at one step, which it returns: each says so, in its
    own log too (the un-signalled rank's as well), none exited at once, and each exited 128 + N."""
    name = signal.Signals(signum).name
    stops = re.findall(r"Stopped by (\w*) at step (\d+)\. Resume with", out)
    assert stops and stops == [(name, stops[0][1])] * 2, out[-4000:]
    step = int(stops[0][1])
    for log in ("train.log", "train.rank1.log"):
        assert f"Stopped by {name} at step {step}." in (run / log).read_text(), log
    assert "exiting now, without saving" not in out and "exited unexpectedly" not in out, out[-4000:]
    # torchrun exits 1 (a rank failed, or it was signalled itself) and reports each rank that did not exit 0:
    # 128 + N, or its own signal to a rank still leaving as the first had left (-N).
    exits = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", out))
    assert proc.returncode == 1 and set(exits.values()) <= {str(128 + signum), str(-signum)}, out[-3000:]
    if sender != "every process":  # signalled itself, torchrun may leave before it reports
        assert exits.keys() == {"0", "1"}, out[-3000:]
    return step


@pytest.mark.slow
@WORKER_RUN
@pytest.mark.parametrize("sender", SENDERS)
def test_scancel_of_a_torchrun_step_stops_every_rank_at_one_step(tmp_path, sender):
    """SLURM signals every process of a job step: torchrun's agent, each rank and its DataLoader workers. The
    agent also forwards the signal to each rank, which so gets it twice: the copy is not a second request
    (that would exit at once, without saving). A signal to one rank alone stops the others with it. Every
    rank stops at the same step and last.pt holds it."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
         *WORKERS, "data.dataset.train_size=512", "trainer.max_epochs=1000", f"hydra.run.dir={run}"],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    seen = wait_for_line(proc, r"step 3/")
    wait_for_children(proc.pid, 2)
    send(proc, sender, signal.SIGTERM)
    out = seen + proc.communicate(timeout=240)[0]
    step = assert_every_rank_stopped(proc, out, run, sender, signal.SIGTERM)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == step
