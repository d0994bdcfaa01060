"""scripts/serve_tb.sh and scripts/tunnel.sh against a real OpenSSH server on 127.0.0.1, a real training run
and a real TensorBoard: every test of the remote scripts that needs the test sshd is here. The headline
command with no --env, several sessions at once, a laptop killed -9 or frozen, the server killing the
session, --run and --list, host keys, SIGINT/SIGTERM/SIGHUP cleanup, hostile paths, every error.

The "server" is this machine reached through the test sshd; every test points --remote-dir/--logdir at
its own temporary directory, and checks what is left running by scanning /proc for that directory.
Heartbeats run at 1 s here (`--heartbeat 1`: dead after 4 s); the defaults (5 s, dead after 20 s) keep
the same logic inside the 30 s that docs/remote_tensorboard.md promises.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import read_metrics
from tests.remote_fixtures import (
    DEADLINE,
    HOST,
    HOST_BAD_KEY,
    HOST_CLOSED,
    HOST_NEW,
    ROOT,
    SERVE_TB,
    TUNNEL,
    Served,
    children,
    descendants,
    first_free_port,
    free_port,
    get_json,
    hold_port,
    listen_addresses,
    port_listening,
    ports_of,
    processes_in,
    processes_mentioning,
    serve_args,
    sshd,  # noqa: F401 (a fixture)
    tensorboard_env_command,
    training_run,  # noqa: F401 (a fixture)
    wait_until,
)

pytestmark = pytest.mark.slow

# Every character that a remote shell would interpret: spaces, both quotes, $, ;, backticks, and
# commands that would leave a trace if anything ran them.
HOSTILE = 'it\'s a "run" $HOME; touch PWNED `touch PWNED2` $(touch PWNED3)'


def run_serve(args, env=None, script=SERVE_TB) -> subprocess.CompletedProcess:
    """SCRIPT ARGS, or the command ARGS when script is None."""
    return subprocess.run(
        [str(script), *args] if script else args,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def one_error_line(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    return assert_one_line_error(result)


def assert_one_line_error(result, *fragments, script=SERVE_TB) -> str:
    """A failure: non-zero exit, and one error line of the script that contains every fragment."""
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{script.name}: error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], result.stderr
    assert "http://" not in result.stdout
    return errors[0]


BOOTSTRAP = 'bash -c IFS= read -r -d "" p && eval "$p"'  # the remote side's whole command line


def remote_leftovers(marker: str) -> dict[int, str]:
    """Processes (here or on the 'server', the same machine) that still work for the test's directory:
    anything that names it, and the remote side, which works in it (its command line names nothing)."""
    found = {pid: cmd[:200] for pid, cmd in processes_mentioning(marker).items()}
    found.update({pid: cmd[:200] for pid, cmd in processes_in(marker).items()})
    return found


@pytest.fixture
def project(tmp_path, training_run):  # noqa: F811
    """A remote project directory holding outputs/run1 from the session's training run."""
    shutil.copytree(training_run, tmp_path / "project" / "outputs" / "run1")
    return tmp_path / "project"


def tensorboards(marker: str) -> dict[int, str]:
    return {pid: cmd for pid, cmd in processes_mentioning(marker).items() if "--logdir" in cmd}


def leftovers(directory: Path) -> dict[int, str]:
    """Anything still at work for a test directory: TensorBoard, its data server, the remote side."""
    return {**tensorboards(str(directory)), **processes_in(str(directory))}


def alive(pid: int) -> bool:
    """The process runs (a zombie that its parent has yet to reap does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def environment(url: str) -> dict:
    return get_json(f"{url}/data/environment")


def copy_run(run: Path, destination: Path, mtime: float | None = None) -> Path:
    shutil.copytree(run, destination)
    if mtime is not None:
        for path in destination.rglob("*"):
            os.utime(path, (mtime, mtime))
    return destination


def test_round_trip_serves_run_graph_and_scalars_then_sigint_cleans_up(sshd, project, tmp_path):  # noqa: F811
    # The default ports, with the first free one of each taken: the script must move on to the next.
    held = [hold_port(16008), hold_port(6008)]
    held_local, held_remote = (sock.getsockname()[1] for sock in held)

    served = Served(serve_args(sshd, project), tmp_path)
    try:
        url = served.wait_for_url()
        ssh = served.ssh_client()
        # Not the held port, and from the default up (another test alongside may hold others, or let go).
        assert served.local_port >= 16008 and served.local_port != held_local
        assert listen_addresses(served.local_port) == {"127.0.0.1"}, (
            "the tunnel must listen on 127.0.0.1 only"
        )

        runs = get_json(f"{url}/data/runs")
        assert runs == ["run1/tb"]
        graphs = get_json(f"{url}/data/plugin/graphs/info")
        assert graphs["run1/tb"]["run_graph"] is True
        scalars = get_json(f"{url}/data/plugin/scalars/tags")
        monitor = read_metrics(project / "outputs" / "run1")["monitor"]  # the task's: val/acc, val/miou, ...
        assert {"train/loss", monitor} <= set(scalars["run1/tb"])
        environment = get_json(f"{url}/data/environment")
        assert environment["data_location"] == str(project / "outputs")
        assert environment["debug"]["flags"]["bind_all"] is False

        # The remote side: TensorBoard and its data server, listening on 127.0.0.1 only.
        remote = tensorboards(str(project))
        assert len(remote) == 2, remote
        assert any("tensorboard_data_server" in cmd for cmd in remote.values()), remote
        remote_ports = ports_of(remote)
        assert remote_ports, "TensorBoard listens on no port"
        remote_port = environment["debug"]["flags"]["port"]
        assert remote_port in remote_ports and remote_port >= 6008 and remote_port != held_remote
        for port in remote_ports:
            assert listen_addresses(port) == {"127.0.0.1"}, (
                f"remote port {port} must listen on 127.0.0.1 only"
            )
        running = remote_leftovers(str(project))
        assert set(remote) < set(running)
        wrappers = [cmd for pid, cmd in processes_in(str(project)).items() if pid not in remote]
        assert [cmd.strip() for cmd in wrappers] == [BOOTSTRAP], (
            "the server's process list must show the remote side's fixed command only"
        )
    finally:
        returncode = served.stop(signal.SIGINT)
        for sock in held:
            sock.close()

    assert returncode == 130, served.output
    assert "stopped the remote TensorBoard" in served.output
    assert tensorboards(str(project)) == {}
    assert remote_leftovers(str(project)) == {}
    # Its processes are gone, and with them their ports (a port check would see another test's listener
    # alongside, under xdist): TensorBoard's, above, and the tunnel's ssh client.
    assert not os.path.exists(f"/proc/{ssh}"), "the tunnel's ssh client outlived serve_tb.sh"


def test_through_a_jump_host_sigterm_stops_the_remote_tensorboard(sshd, project, tmp_path):  # noqa: F811
    # -J passes through to ssh: the test sshd is its own jump host. A named free local port is taken as is.
    local_port = first_free_port(17008)
    served = Served(serve_args(sshd, project, "-J", HOST, "--local-port", str(local_port)), tmp_path)
    served.wait_for_url()
    assert served.local_port == local_port
    remote = tensorboards(str(project))
    assert ports_of(remote), "TensorBoard listens on no port"
    assert served.stop(signal.SIGTERM) == 143, served.output
    assert not processes_mentioning(str(sshd.client_config)), (
        "an ssh client (or its jump) outlived the script"
    )
    assert tensorboards(str(project)) == {}
    assert remote_leftovers(str(project)) == {}
    # TensorBoard's processes are gone (above), and with them its ports; a port check would see another
    # test's listener alongside, under xdist.


def test_a_dropped_connection_stops_the_remote_tensorboard(sshd, project, tmp_path):  # noqa: F811
    # Ports of its own: a port check below must not see another test's TensorBoard, running alongside.
    unique = ["--remote-port", str(free_port()), "--local-port", str(free_port())]
    served = Served(serve_args(sshd, project, "--no-reconnect", *unique), tmp_path)
    served.wait_for_url()
    ports = ports_of(tensorboards(str(project)))
    assert ports
    # The connection drops: its ssh client dies without a word, as with a closed laptop lid.
    os.kill(served.ssh_client(), signal.SIGKILL)
    assert served.process.wait(timeout=DEADLINE) == 1
    assert "the connection to stb-test was lost" in served.output
    # sshd notices the closed connection and closes the wrapper's stdin; the wrapper stops TensorBoard.
    wait_until(lambda: not tensorboards(str(project)), "the remote TensorBoard to stop", DEADLINE)
    wait_until(lambda: not remote_leftovers(str(project)), "the remote wrapper to exit", DEADLINE)
    assert not any(port_listening(port) for port in ports)


def test_hostile_directory_names_reach_the_server_intact(sshd, training_run, tmp_path):  # noqa: F811
    project = tmp_path / HOSTILE
    logdir = f"logs {HOSTILE}"
    shutil.copytree(training_run, project / logdir / "run1")
    served = Served(
        [
            *sshd.ssh_args,
            "--no-browser",
            f"--remote-dir={project}",
            "--logdir",
            logdir,
            "--env",
            tensorboard_env_command(),
            HOST,
        ],
        tmp_path,
    )
    try:
        url = served.wait_for_url()
        assert get_json(f"{url}/data/environment")["data_location"] == str(project / logdir)
        assert get_json(f"{url}/data/runs") == ["run1/tb"]
        query = urllib.parse.urlencode({"tag": "train/loss", "run": "run1/tb"})
        assert get_json(f"{url}/data/plugin/scalars/scalars?{query}")
    finally:
        assert served.stop() == 130, served.output
    assert not tensorboards(str(project))
    home = os.path.expanduser("~")
    for trace in ("PWNED", "PWNED2", "PWNED3"):
        for where in (tmp_path, project, home, "/"):
            assert not os.path.exists(os.path.join(where, trace)), (
                f"a shell ran a command from a path: {trace}"
            )


def test_hostile_missing_directory_is_named_exactly_in_the_error(sshd, tmp_path):  # noqa: F811
    result = run_serve(serve_args(sshd, tmp_path, "--logdir", HOSTILE))
    assert_one_line_error(result, f"log directory '{tmp_path / HOSTILE}' does not exist")
    assert not list(tmp_path.glob("PWNED*"))


# ---- failures: fast, one line, non-zero --------------------------------------------------------------


def test_unreachable_host(sshd, tmp_path):  # noqa: F811
    result = run_serve([*sshd.ssh_args, "--no-browser", HOST_CLOSED])
    assert_one_line_error(result, "cannot reach stb-closed", "Connection refused")


def test_authentication_failure_never_prompts(sshd, tmp_path):  # noqa: F811
    result = run_serve([*sshd.ssh_args, "--no-browser", HOST_BAD_KEY])
    assert_one_line_error(result, "authentication to stb-badkey failed", "Permission denied")


def test_unknown_host_key_is_refused(sshd, tmp_path):  # noqa: F811
    # StrictHostKeyChecking stays on: a server whose key is not in known_hosts is not trusted.
    result = run_serve([*sshd.ssh_args, "-o", "UserKnownHostsFile=/dev/null", "--no-browser", HOST])
    assert_one_line_error(result, "unknown host key for stb-test", "--accept-new")


def test_tensorboard_not_found_says_how_to_pass_env(sshd, project):  # noqa: F811
    args = [*sshd.ssh_args, "--no-browser", "--remote-dir", str(project), "--env", "PATH=/usr/bin:/bin", HOST]
    assert_one_line_error(run_serve(args), "tensorboard not found on the server", "--env")


def test_missing_log_directory_lists_what_is_there(sshd, project):  # noqa: F811
    result = run_serve(serve_args(sshd, project, "--logdir", "outptus"))
    assert_one_line_error(result, f"log directory '{project}/outptus' does not exist")
    assert "outputs" in result.stderr.split("holds:")[1]  # the listing of the remote project directory
    assert not tensorboards(str(project))


def test_log_directory_without_event_files_is_refused_before_starting(sshd, tmp_path):  # noqa: F811
    (tmp_path / "outputs" / "run1" / "tb").mkdir(parents=True)
    (tmp_path / "outputs" / "run1" / "train.log").write_text("started\n")
    result = run_serve(serve_args(sshd, tmp_path))
    assert_one_line_error(result, "no event files under", "You haven't written any data")
    assert "run1" in result.stderr
    assert not tensorboards(str(tmp_path))


def test_missing_remote_directory(sshd, tmp_path):  # noqa: F811
    result = run_serve(serve_args(sshd, tmp_path / "nowhere"))
    assert_one_line_error(result, "remote directory", "does not exist")


def test_local_port_in_use(sshd, project):  # noqa: F811
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_serve(serve_args(sshd, project, "--local-port", str(port)))
    assert_one_line_error(result, f"local port {port} is already in use")


def test_local_port_that_cannot_be_bound_stops_the_remote_side(sshd, project):  # noqa: F811
    # Bound but not listening: the connect probe sees it free, ssh's bind fails (ExitOnForwardFailure).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = run_serve(serve_args(sshd, project, "--local-port", str(port)))
    assert_one_line_error(result, f"cannot bind local port 127.0.0.1:{port}")
    wait_until(lambda: not tensorboards(str(project)), "the remote TensorBoard to stop", DEADLINE)


def test_remote_port_in_use(sshd, project):  # noqa: F811
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_serve(serve_args(sshd, project, "--remote-port", str(port)))
    assert_one_line_error(result, f"remote port {port} is already in use")


# ---- the headline command --------------------------------------------------------------------------


def test_headline_command_without_env_then_sighup_leaves_nothing(sshd, training_run, tmp_path):  # noqa: F811
    # A checkout at ~/code/proj on the laptop and on the server (here the same directory: the test
    # sshd's HOME), its .venv holding TensorBoard, as `make install` leaves it.
    checkout = sshd.home / "code" / "proj"
    checkout.mkdir(parents=True)
    shutil.copytree(ROOT / "scripts", checkout / "scripts", ignore=shutil.ignore_patterns("*.py"))
    shutil.copy(ROOT / "scripts" / "tbdoctor.py", checkout / "scripts")
    (checkout / ".venv").symlink_to(Path(sys.executable).parent.parent)
    copy_run(training_run, checkout / "outputs" / "run1")
    local_tmp = Path(tempfile.mkdtemp(prefix="stb-", dir="/tmp"))  # short: a socket path lives there
    env = {**os.environ, "HOME": str(sshd.home), "TMPDIR": str(local_tmp)}
    # `-F config` only stands for the user's ~/.ssh/config, where the alias would live.
    served = Served(
        [*sshd.ssh_args, "--no-browser", HOST], tmp_path, checkout / "scripts" / "serve_tb.sh", env=env
    )
    try:
        url = served.wait_for_url()
        assert f"tensorboard {checkout}/.venv/bin/tensorboard (from {checkout}/.venv)" in served.output
        assert environment(url)["data_location"] == str(checkout / "outputs")
        assert get_json(f"{url}/data/runs") == ["run1/tb"]
        assert list(local_tmp.iterdir()), "the laptop side keeps its control socket in TMPDIR"
        # The server's process list: the remote side shows its fixed command, nothing the user sent.
        remote = tensorboards(str(checkout))
        wrappers = {pid: cmd.strip() for pid, cmd in processes_in(str(checkout)).items() if pid not in remote}
        assert list(wrappers.values()) == [BOOTSTRAP]
        (wrapper,) = wrappers
        # Only this test's processes: the CI machine's own harness may run long command lines.
        ours = {**descendants(sshd.pid), **descendants(served.process.pid)}
        assert wrapper in ours and served.ssh_client() in ours
        for cmd in ours.values():
            assert len(cmd) < 2000, f"a long command line on the server: {cmd[:200]}"
    finally:
        served.process.send_signal(signal.SIGHUP)  # the terminal closed
        assert served.process.wait(timeout=DEADLINE) == 129, served.output
    wait_until(lambda: not leftovers(checkout), "the remote side to stop", 30)
    wait_until(lambda: not alive(wrapper), "the remote side to exit", 5)
    assert not list(local_tmp.iterdir()), "the local temp directory outlived SIGHUP"
    local_tmp.rmdir()
    assert not [pid for pid, name in children(wrapper).items() if name == "sleep"]


# ---- several at once -------------------------------------------------------------------------------


def test_three_sessions_at_once_each_serve_their_own_log_directory(sshd, training_run, tmp_path):  # noqa: F811
    project = tmp_path / "project"
    for name in "abc":
        copy_run(training_run, project / name / "run1")
    sessions = [
        Served(serve_args(sshd, project, "--logdir", name), tmp_path / name)
        for name in "abc"
        if (tmp_path / name).mkdir() is None
    ]
    try:
        urls = [session.wait_for_url() for session in sessions]
        locations = [environment(url)["data_location"] for url in urls]
        assert locations == [str(project / name) for name in "abc"]
        ports = [environment(url)["debug"]["flags"]["port"] for url in urls]
        assert len(set(ports)) == 3 and len(set(urls)) == 3
    finally:
        for session in sessions:
            session.process.send_signal(signal.SIGTERM)
        codes = [session.process.wait(timeout=DEADLINE) for session in sessions]
    assert codes == [143] * 3, [session.output for session in sessions]
    wait_until(lambda: not leftovers(project), "every remote TensorBoard to stop", 5)


# ---- the laptop vanishes, the server drops the session ---------------------------------------------


def test_kill_9_of_the_laptop_side_stops_the_remote_tensorboard(sshd, project, tmp_path):  # noqa: F811
    served = Served(serve_args(sshd, project, "--heartbeat", "1"), tmp_path)
    served.wait_for_url()
    assert tensorboards(str(project))
    ssh = served.ssh_client()
    for pid in (served.process.pid, ssh):  # the script and its ssh, as when a laptop dies
        os.kill(pid, signal.SIGKILL)
    served.process.wait()
    start = time.monotonic()
    wait_until(lambda: not leftovers(project), "the remote TensorBoard to stop", 30)
    print(f"remote TensorBoard gone {time.monotonic() - start:.1f} s after kill -9")


def test_frozen_laptop_stops_remote_tensorboard_then_reconnects_to_the_same_url(sshd, project, tmp_path):  # noqa: F811
    # The lid closes: the script and its ssh stop, the TCP connection stays open, no heartbeat flows.
    served = Served(serve_args(sshd, project, "--heartbeat", "1"), tmp_path)
    url = served.wait_for_url()
    first = set(tensorboards(str(project)))
    ssh = served.ssh_client()
    frozen = (served.process.pid, ssh)
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        wait_until(lambda: not set(tensorboards(str(project))) & first, "the remote side to notice", 30)
        stopped_after = time.monotonic() - start
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    # The lid opens: the laptop side finds the connection dead and reconnects to the same local URL.
    start = time.monotonic()
    wait_until(lambda: "reconnected to stb-test" in served.output, "the reconnect", 30)
    assert environment(url)["data_location"] == str(project / "outputs")
    print(
        f"frozen laptop: remote TensorBoard gone after {stopped_after:.1f} s (heartbeat 1 s), "
        f"reconnected {time.monotonic() - start:.1f} s after waking"
    )
    assert served.output.count("reconnected to stb-test") == 1
    assert served.stop(signal.SIGINT) == 130, served.output
    wait_until(lambda: not leftovers(project), "the remote side to stop", 5)


def test_session_killed_on_the_server_reconnects_and_serves_again(sshd, project, tmp_path):  # noqa: F811
    served = Served(serve_args(sshd, project, "--heartbeat", "1"), tmp_path)
    url = served.wait_for_url()
    (wrapper,) = (pid for pid, cmd in processes_in(str(project)).items() if cmd.strip() == BOOTSTRAP)
    session = int(Path(f"/proc/{wrapper}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert "sshd" in Path(f"/proc/{session}/cmdline").read_text()
    os.kill(session, signal.SIGKILL)  # the server's sshd session process dies
    start = time.monotonic()
    wait_until(lambda: "reconnected to stb-test" in served.output, "the reconnect", 30)
    assert environment(url)["data_location"] == str(project / "outputs")
    print(f"server-side kill: serving again after {time.monotonic() - start:.1f} s")
    # One reconnect, and it holds: no second one. A first attempt may fail while the dead connection's
    # local port is still held (under load CI saw "cannot bind local port" once, then the reconnect).
    lines = [line for line in served.output.splitlines() if "reconnected to" in line]
    assert len(lines) == 1, served.output
    assert served.stop(signal.SIGTERM) == 143, served.output
    wait_until(lambda: not leftovers(project), "the remote side to stop", 5)


# A slow network between the server and the laptop: every heartbeat line ("@@serve_tb NONCE alive")
# arrives in two parts, the second SPLIT_GAP seconds after the first, longer than the laptop's heartbeat.
# It runs on the server as a filter of the remote side's stdout (put there with --env), and counts the
# lines it has split in a file, so that the test waits for a number of heartbeats, not for a time.
SPLIT_GAP = 1.5
SPLITTER = f"""
import sys, time
count, out = 0, sys.stdout.buffer
for line in iter(sys.stdin.buffer.readline, b""):
    if line.endswith(b" alive\\n"):
        out.write(line[:1]); out.flush(); time.sleep({SPLIT_GAP}); out.write(line[1:]); out.flush()
        count += 1
        with open(sys.argv[1], "w") as counter:
            counter.write(str(count))
    else:
        out.write(line); out.flush()
"""


def test_heartbeat_lines_cut_in_two_by_the_network_never_reach_the_terminal(sshd, project, tmp_path):  # noqa: F811
    (tmp_path / "splitter.py").write_text(SPLITTER)
    counter = tmp_path / "split_lines"
    split = f"exec > >({shlex.quote(sys.executable)} -u {tmp_path / 'splitter.py'} {counter})"
    args = serve_args(sshd, project, "--heartbeat", "1")
    args[args.index("--env") + 1] += f"; {split}"
    served = Served(args, tmp_path)
    try:
        served.wait_for_url()
        wait_until(
            lambda: counter.exists() and int(counter.read_text() or 0) >= 4, "4 split heartbeats", DEADLINE
        )
        assert "alive" not in served.output and "serve_tb " not in served.output, served.output
        assert "reconnect" not in served.output, served.output  # a slow line is no dead connection
    finally:
        assert served.stop(signal.SIGINT) == 130, served.output
    wait_until(lambda: not leftovers(project), "the remote side to stop", 5)


# ---- choosing runs --------------------------------------------------------------------------------


@pytest.fixture
def dated_runs(tmp_path, training_run):  # noqa: F811
    """outputs/ as Hydra leaves it: an old run, a new run, and a run that wrote no event files yet."""
    outputs = tmp_path / "project" / "outputs"
    copy_run(training_run, outputs / "2026-01-01" / "10-00-00_old", mtime=1_700_000_000)
    copy_run(training_run, outputs / "2026-01-02" / "09-00-00_new", mtime=1_750_000_000)
    (outputs / "2026-01-03" / "08-00-00_starting" / ".hydra").mkdir(parents=True)
    return tmp_path / "project"


def test_list_prints_the_runs_and_starts_nothing(sshd, dated_runs):  # noqa: F811
    result = run_serve(serve_args(sshd, dated_runs, "--list"))
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].split() == ["run", "last", "write", "size", "event", "files"]
    names = [row.split()[0] for row in rows[1:]]
    assert names == ["2026-01-03/08-00-00_starting", "2026-01-02/09-00-00_new", "2026-01-01/10-00-00_old"]
    assert rows[2].split()[1] == time.strftime("%Y-%m-%d", time.localtime(1_750_000_000))
    assert rows[2].endswith("yes (1)")
    assert rows[1].endswith(" no") and "MB" in rows[2]
    assert not leftovers(dated_runs)


def test_run_latest_and_run_pattern(sshd, dated_runs, tmp_path):  # noqa: F811
    served = Served(serve_args(sshd, dated_runs, "--run", "latest"), tmp_path)
    try:
        url = served.wait_for_url()
        assert environment(url)["data_location"] == str(dated_runs / "outputs/2026-01-02/09-00-00_new")
    finally:
        assert served.stop() == 130
    (tmp_path / "b").mkdir()
    served = Served(serve_args(sshd, dated_runs, "--run", "2026-01-0[12]/*"), tmp_path / "b")
    try:
        url = served.wait_for_url()
        runs = sorted(get_json(f"{url}/data/runs"))
        assert runs == ["2026-01-01/10-00-00_old/tb", "2026-01-02/09-00-00_new/tb"]
        assert "picked 2 run(s)" in served.output
    finally:
        assert served.stop() == 130
    wait_until(lambda: not leftovers(dated_runs), "the remote side to stop", 5)
    error = one_error_line(run_serve(serve_args(sshd, dated_runs, "--run", "nothing-like-it")))
    assert "no run under" in error and "matches --run nothing-like-it" in error


def test_the_log_doctor_follows_the_run_links_and_no_default_port(sshd, dated_runs, tmp_path):  # noqa: F811
    # Another user's real TensorBoard on the server's default port: serve_tb.sh moves on to the next
    # port, so the log doctor must not say "a TensorBoard is already on port 6008"; and --run GLOB
    # serves a directory of links, which the doctor must follow ("no event files" otherwise).
    port = first_free_port(6008)
    other = copy_run(dated_runs / "outputs" / "2026-01-01" / "10-00-00_old", tmp_path / "someone else")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(other), "--host", "127.0.0.1"]
    tensorboard = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: port_listening(port), "the other TensorBoard to listen", DEADLINE)
        served = Served(serve_args(sshd, dated_runs, "--run", "2026-01-0[12]/*"), tmp_path)
        try:
            url = served.wait_for_url()
            assert environment(url)["data_location"] != str(other)
        finally:
            assert served.stop() == 130
    finally:
        tensorboard.terminate()
        tensorboard.wait(timeout=DEADLINE)
    assert "2 run(s), 2 with data" in served.output  # the doctor's summary of the two linked runs
    for false_alarm in ("problem:", "no event files", "already on port", "taken by another program"):
        assert false_alarm not in served.output, served.output


def test_tilde_means_the_remote_home(sshd, training_run):  # noqa: F811
    copy_run(training_run, sshd.home / "logs" / "run1")
    result = run_serve([*sshd.ssh_args, "--remote-dir", "$HOME", "--logdir", "~/logs", "--list", HOST])
    assert result.returncode == 0, result.stderr
    assert f"runs under {sshd.home / 'logs'}" in result.stderr
    assert result.stdout.splitlines()[1].startswith("run1 ")


# ---- the remote project directory ------------------------------------------------------------------


def checkouts(sshd, tmp_path: Path, training_run: Path, laptop: str, *server: str) -> tuple[Path, dict]:  # noqa: F811
    """The project checked out on the laptop at <laptop home>/LAPTOP and on the server at each of SERVER
    (relative to the server's home; the first one holds a .venv with TensorBoard and a run). Returns the
    laptop's checkout and the environment of a shell there (its own HOME, its own serve_tb memory)."""
    home = tmp_path / "laptop home"
    laptop_checkout = home / laptop
    shutil.copytree(ROOT / "scripts", laptop_checkout / "scripts")
    for i, place in enumerate(server):
        checkout = sshd.home / place
        shutil.copytree(ROOT / "scripts", checkout / "scripts")
        if i == 0:
            (checkout / ".venv").symlink_to(Path(sys.executable).parent.parent)
            copy_run(training_run, checkout / "outputs" / "run1")
    local_tmp = Path(tempfile.mkdtemp(prefix="stb-", dir="/tmp"))  # short: a socket path lives there
    atexit.register(shutil.rmtree, local_tmp, ignore_errors=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "TMPDIR": str(local_tmp),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    return laptop_checkout, env


def test_no_remote_dir_finds_the_project_on_the_server_then_remembers_it(sshd, training_run, tmp_path):  # noqa: F811
    # The laptop's checkout is ~/work/proj-x, the server's ~/srv/code/proj-x: not the same path under $HOME.
    laptop, env = checkouts(sshd, tmp_path, training_run, "work/proj-x", "srv/code/proj-x")
    script = laptop / "scripts" / "serve_tb.sh"
    served = Served([*sshd.ssh_args, "--no-browser", HOST], tmp_path, script=script, env=env)
    try:
        url = served.wait_for_url()
        assert environment(url)["data_location"] == str(sshd.home / "srv/code/proj-x/outputs")
        assert f"remote directory {sshd.home / 'srv/code/proj-x'} (found on the server" in served.output
    finally:
        assert served.stop() == 130, served.output

    # A second project of that name on the server: a search would not know which; the memory does.
    shutil.copytree(ROOT / "scripts", sshd.home / "srv" / "old" / "proj-x" / "scripts")
    listed = run_serve([str(script), *sshd.ssh_args, "--list", HOST], env=env, script=None)
    assert listed.returncode == 0, listed.stderr
    assert f"remote directory {sshd.home / 'srv/code/proj-x'} (remembered" in listed.stderr
    assert listed.stdout.splitlines()[1].startswith("run1 ")

    # Without the memory: one line that names both and says what to do.
    env["XDG_STATE_HOME"] = str(tmp_path / "no memory")
    error = one_error_line(run_serve([str(script), *sshd.ssh_args, "--list", HOST], env=env, script=None))
    assert "several directories look like the project" in error and "--remote-dir" in error
    assert str(sshd.home / "srv/code/proj-x") in error and str(sshd.home / "srv/old/proj-x") in error
    (sshd.home / "srv").rename(sshd.home / ".srv")  # hidden directories are not searched
    error = one_error_line(run_serve([str(script), *sshd.ssh_args, "--list", HOST], env=env, script=None))
    assert "no directory named 'proj-x'" in error and "pass --remote-dir DIR once" in error


def test_an_unquoted_tilde_gets_a_hint(sshd, project, tmp_path):  # noqa: F811
    # `--remote-dir ~/proj` unquoted: the laptop's shell made it the laptop's home.
    laptop_home = tmp_path / "laptop home"
    env = {**os.environ, "HOME": str(laptop_home)}
    error = one_error_line(
        run_serve([*sshd.ssh_args, "--list", "--remote-dir", f"{laptop_home}/proj", HOST], env)
    )
    assert f"it starts with the laptop's home {laptop_home}" in error and "quote it ('~/proj')" in error
    error = one_error_line(run_serve(serve_args(sshd, project, "--logdir", f"{laptop_home}/logs"), env))
    assert "log directory" in error and "quote it ('~/logs')" in error


def test_control_characters_from_the_server_never_reach_the_terminal_raw(sshd, project):  # noqa: F811
    (project / "\x1b[31mred\x07").mkdir()  # listed by the server when the log directory is missing
    result = run_serve(serve_args(sshd, project, "--logdir", "missing"))
    one_error_line(result)
    assert "^[[31mred^G" in result.stderr
    assert not any(c in result.stderr + result.stdout for c in "\x1b\x07\r")


# ---- host keys ------------------------------------------------------------------------------------


def test_unknown_host_key_with_ssh_default_checking_says_accept_new(sshd, project, tmp_path):  # noqa: F811
    # HOST_NEW leaves StrictHostKeyChecking at ssh's default (ask): with no terminal to ask on, ssh says
    # only "Host key verification failed.", and the scripts must still say what it means and what to do.
    args = [*sshd.ssh_args, "--list", "--remote-dir", str(project), HOST_NEW]
    unknown = one_error_line(run_serve(args))
    assert "unknown host key for stb-new" in unknown and "--accept-new" in unknown
    # A port of its own: the default 16008 may be another test's tunnel, running alongside (xdist).
    tunnel = subprocess.run(
        [str(TUNNEL), *sshd.ssh_args, HOST_NEW, "6008", str(free_port())], capture_output=True, text=True,
        timeout=DEADLINE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert tunnel.returncode == 1
    assert tunnel.stderr.splitlines() == [
        "tunnel.sh: error: unknown host key for stb-new: ssh has never seen this server; check its fingerprint "
        "and connect once with plain ssh, or pass -o StrictHostKeyChecking=accept-new to trust it on first use"
    ]

    # --accept-new: trust on first use, and the key lands in known_hosts.
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    result = run_serve([*sshd.ssh_args, "-o", f"UserKnownHostsFile={known_hosts}", "--accept-new", *args[2:]])
    assert result.returncode == 0, result.stderr
    assert "run1" in result.stdout
    assert "ssh-ed25519" in known_hosts.read_text()


def test_changed_host_key_is_refused_with_the_command_that_removes_the_old_key(sshd, project, tmp_path):  # noqa: F811
    # The server presents its host key; known_hosts pins the other one: "the key changed". HOST is an
    # alias (HostName 127.0.0.1) on a port other than 22: known_hosts holds [127.0.0.1]:PORT, not HOST.
    changed = tmp_path / "known_hosts"
    other = (sshd.directory / "other_host_key.pub").read_text().split()
    changed.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    for extra in ([], ["--accept-new"]):
        args = [*sshd.ssh_args, "-o", f"UserKnownHostsFile={changed}", *extra, "--list", HOST]
        result = run_serve(args)
        error = one_error_line(result)
        assert "host key of stb-test has CHANGED (possible man-in-the-middle)" in error
        assert "SHA256:" in result.stderr and "fingerprint" in result.stderr
    remove = error.split("remove the old key with: ", 1)[1]
    assert remove == f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {changed}"

    # The command does what it says (run as the user would paste it, without a shell here), after which
    # --accept-new trusts the server's key.
    removed = subprocess.run(shlex.split(remove), capture_output=True, text=True, timeout=DEADLINE)
    assert removed.returncode == 0, removed.stderr
    assert other[1] not in changed.read_text()
    args = [*sshd.ssh_args, "-o", f"UserKnownHostsFile={changed}", "--accept-new", "--list"]
    result = run_serve([*args, "--remote-dir", str(project), HOST])
    assert result.returncode == 0, result.stderr
    assert "run1" in result.stdout


# ---- what must not be believed or run -------------------------------------------------------------


def test_a_forged_ready_line_in_a_path_is_not_believed(sshd, tmp_path):  # noqa: F811
    forged = "x\n@@serve_tb ready 6006 1 /etc\n"
    (tmp_path / "project" / forged).mkdir(parents=True)  # listed raw by `ls` in the error
    result = run_serve(serve_args(sshd, tmp_path / "project", "--logdir", forged + "/missing"))
    error = one_error_line(result)
    assert "does not exist" in error and "\\n@@serve_tb ready" in error  # shown escaped, on one line


def test_native_windows_shells_are_refused(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uname").write_text("#!/bin/sh\necho MINGW64_NT-10.0-19045\n")
    (fake / "uname").chmod(0o755)
    result = run_serve(["somehost"], env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert "run it inside WSL" in one_error_line(result)


# ---- tunnel.sh --------------------------------------------------------------------------------------


def test_tunnel_forwards_to_a_server_already_running(sshd, tmp_path):  # noqa: F811
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("through the tunnel\n")
    remote_port = free_port()
    # "Anything else" already running on the server: a plain HTTP server on 127.0.0.1.
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(tmp_path / "www"),
            str(remote_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_listening(remote_port), "the web server to listen")
        # Local ports of their own: the default 16008 may be another test's tunnel, running alongside.
        tunnel = Served([*sshd.ssh_args, HOST, str(remote_port), str(free_port())], tmp_path, script=TUNNEL)
        url = tunnel.wait_for_url()
        assert url.startswith("http://127.0.0.1:")  # what is forwarded: not localhost, which may be [::1]
        with urllib.request.urlopen(f"{url}/hello.txt", timeout=30) as response:
            assert response.read() == b"through the tunnel\n"
        assert listen_addresses(tunnel.local_port) == {"127.0.0.1"}
        assert "nothing answers" not in tunnel.output
        ssh = tunnel.ssh_client()
        assert tunnel.stop(signal.SIGINT) == 130
        assert not port_listening(tunnel.local_port)
        assert not os.path.exists(f"/proc/{ssh}"), "the ssh client outlived tunnel.sh"
    finally:
        web.terminate()
        web.wait()


def test_tunnel_says_when_nothing_answers_on_the_server(sshd, tmp_path):  # noqa: F811
    tunnel = Served([*sshd.ssh_args, HOST, str(free_port()), str(free_port())], tmp_path, script=TUNNEL)
    tunnel.wait_for_url()
    wait_until(lambda: "press Ctrl-C" in tunnel.output, "tunnel.sh to finish its checks")
    assert "nothing answers HTTP" in tunnel.output
    assert tunnel.stop(signal.SIGTERM) == 143


def test_tunnel_unreachable_host(sshd):  # noqa: F811
    result = run_serve([*sshd.ssh_args, HOST_CLOSED, "6008", str(free_port())], script=TUNNEL)
    assert_one_line_error(result, "cannot reach stb-closed", script=TUNNEL)


def test_tunnel_local_port_in_use(sshd):  # noqa: F811
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_serve([*sshd.ssh_args, HOST, "6008", str(port)], script=TUNNEL)
    assert_one_line_error(result, f"local port {port} is already in use", script=TUNNEL)


def test_tunnel_local_port_that_cannot_be_bound(sshd):  # noqa: F811
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: only ssh's own bind finds out
        port = sock.getsockname()[1]
        result = run_serve([*sshd.ssh_args, HOST, "6008", str(port)], script=TUNNEL)
    assert_one_line_error(result, f"cannot bind local port 127.0.0.1:{port}", script=TUNNEL)
