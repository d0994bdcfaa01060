"""scripts/serve_tb.sh against a real OpenSSH server on 127.0.0.1, a real training run and a real TensorBoard.

The "server" is this machine reached through the test sshd; every test points --remote-dir/--logdir at
its own temporary directory, and checks what is left running by scanning /proc for that directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import urllib.parse

import pytest

from tests.helpers import read_metrics
from tests.remote_fixtures import (
    DEADLINE,
    HOST,
    HOST_BAD_KEY,
    HOST_CLOSED,
    SERVE_TB,
    Served,
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


def run_serve(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SERVE_TB), *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def assert_one_line_error(result, *fragments) -> str:
    """A failure: non-zero exit, and one error line that contains every fragment."""
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("serve_tb.sh: error: ")]
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


def tensorboard_processes(marker: str) -> dict[int, str]:
    """TensorBoard and its data server (both get --logdir) for the test's directory."""
    return {pid: cmd for pid, cmd in processes_mentioning(marker).items() if "--logdir" in cmd}


@pytest.fixture
def project(tmp_path, training_run):  # noqa: F811
    """A remote project directory holding outputs/run1 from the session's training run."""
    shutil.copytree(training_run, tmp_path / "project" / "outputs" / "run1")
    return tmp_path / "project"


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
        remote = tensorboard_processes(str(project))
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
    assert tensorboard_processes(str(project)) == {}
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
    remote = tensorboard_processes(str(project))
    assert ports_of(remote), "TensorBoard listens on no port"
    assert served.stop(signal.SIGTERM) == 143, served.output
    assert not processes_mentioning(str(sshd.client_config)), (
        "an ssh client (or its jump) outlived the script"
    )
    assert tensorboard_processes(str(project)) == {}
    assert remote_leftovers(str(project)) == {}
    # TensorBoard's processes are gone (above), and with them its ports; a port check would see another
    # test's listener alongside, under xdist.


def test_a_dropped_connection_stops_the_remote_tensorboard(sshd, project, tmp_path):  # noqa: F811
    # Ports of its own: a port check below must not see another test's TensorBoard, running alongside.
    unique = ["--remote-port", str(free_port()), "--local-port", str(free_port())]
    served = Served(serve_args(sshd, project, "--no-reconnect", *unique), tmp_path)
    served.wait_for_url()
    ports = ports_of(tensorboard_processes(str(project)))
    assert ports
    # The connection drops: its ssh client dies without a word, as with a closed laptop lid.
    os.kill(served.ssh_client(), signal.SIGKILL)
    assert served.process.wait(timeout=DEADLINE) == 1
    assert "the connection to stb-test was lost" in served.output
    # sshd notices the closed connection and closes the wrapper's stdin; the wrapper stops TensorBoard.
    wait_until(lambda: not tensorboard_processes(str(project)), "the remote TensorBoard to stop", DEADLINE)
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
    assert not tensorboard_processes(str(project))
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
    assert not tensorboard_processes(str(project))


def test_log_directory_without_event_files_is_refused_before_starting(sshd, tmp_path):  # noqa: F811
    (tmp_path / "outputs" / "run1" / "tb").mkdir(parents=True)
    (tmp_path / "outputs" / "run1" / "train.log").write_text("started\n")
    result = run_serve(serve_args(sshd, tmp_path))
    assert_one_line_error(result, "no event files under", "You haven't written any data")
    assert "run1" in result.stderr
    assert not tensorboard_processes(str(tmp_path))


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
    wait_until(lambda: not tensorboard_processes(str(project)), "the remote TensorBoard to stop", DEADLINE)


def test_remote_port_in_use(sshd, project):  # noqa: F811
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_serve(serve_args(sshd, project, "--remote-port", str(port)))
    assert_one_line_error(result, f"remote port {port} is already in use")
