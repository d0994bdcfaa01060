"""scripts/tunnel.sh (against the real test sshd), scripts/tb.sh (a real local TensorBoard), and the
command-line contract of all three scripts: --help true to the code, bad input fails in one line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests.helpers import needs
from tests.remote_fixtures import (
    DEADLINE,
    SERVE_TB,
    TB,
    TUNNEL,
    Served,
    children,
    get_json,
    hold_port,
    listen_addresses,
    port_listening,
    processes_mentioning,
    require,
    sshd,  # noqa: F401 (a fixture)
    training_run,  # noqa: F401 (a fixture)
    wait_until,
)

# serve_tb.sh and tunnel.sh, the remote TensorBoard scripts: a project may leave them out (copier.yml) and
# keep the local helper, tb.sh.
REMOTE = needs("scripts/serve_tb.sh", "scripts/tunnel.sh")


def run_script(script, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result, script, *fragments) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{script.name}: error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], result.stderr


# ---- the command-line contract ------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [pytest.param(SERVE_TB, marks=REMOTE), pytest.param(TUNNEL, marks=REMOTE), TB],
    ids=lambda path: path.name,
)
def test_scripts_are_strict_bash(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK)
    assert "--bind_all" not in text
    # Host keys stay checked: the only setting is accept-new (trust on first use, a changed key refused),
    # and only when the user asks for it with --accept-new.
    assert set(re.findall(r"StrictHostKeyChecking=?[\w-]*", text)) <= {"StrictHostKeyChecking=accept-new"}
    if shutil.which("shellcheck"):
        # -x follows `source scripts/common.sh`, which the directive names relative to the checkout.
        result = subprocess.run(
            ["shellcheck", "-x", str(script)], capture_output=True, text=True, cwd=script.parent.parent
        )
        assert result.returncode == 0, result.stdout


@REMOTE
def test_remote_side_passes_shellcheck():
    require(shutil.which("shellcheck") is not None, "shellcheck")
    remote = SERVE_TB.parent / "serve_tb_remote.sh"
    result = subprocess.run(["shellcheck", str(remote)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@REMOTE  # all five laptop-side scripts
def test_laptop_side_is_portable_to_bash_32_and_bsd(tmp_path):
    check = [sys.executable, str(SERVE_TB.parents[1] / "tools" / "check_portability.py")]
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "5 file(s)" in result.stdout
    # The check itself finds what macOS lacks.
    sample = tmp_path / "sample.sh"
    sample.write_text(
        "declare -A seen\n"
        'echo "${name,,}"\n'
        "read -r -t 0.5 line\n"
        "sed -i 's/a/b/' file\n"
        "exec {fd}>log\n"
        "cat <<EOF\n"
        "mapfile in a usage text is fine\n"
        "EOF\n"
        "# readarray in a comment is fine\n"
    )
    result = subprocess.run([*check, str(sample)], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(":")[1] for line in lines] == ["1", "2", "3", "4", "5"], result.stdout


@REMOTE
def test_serve_tb_help_is_true_to_the_code():
    result = run_script(SERVE_TB, "--help")
    assert result.returncode == 0
    text = SERVE_TB.read_text()
    options = set(re.findall(r"^  (--[a-z-]+)", result.stdout, re.MULTILINE))
    assert options == {
        "--logdir",
        "--remote-dir",
        "--env",
        "--run",
        "--list",
        "--local-port",
        "--remote-port",
        "--heartbeat",
        "--no-reconnect",
        "--accept-new",
        "--no-browser",
    }
    for option in options:
        assert f"    {option})" in text, f"--help documents {option}, the parser does not take it"
    variables = set(re.findall(r"\[(SERVE_TB_[A-Z_]+)", result.stdout))
    assert variables == set(re.findall(r"\$\{(SERVE_TB_[A-Z_]+):-", text)), (
        "--help and the code name other variables"
    )
    assert len(variables) == 8
    assert "http://127.0.0.1:PORT" in result.stdout


@REMOTE
def test_environment_variables_mean_the_same_as_the_options(tmp_path):
    # SERVE_TB_LOCAL_PORT is checked like --local-port, before any connection is made.
    env = {**os.environ, "SERVE_TB_LOCAL_PORT": "nope"}
    result = subprocess.run(
        [str(SERVE_TB), "somehost"], capture_output=True, text=True, env=env, timeout=DEADLINE
    )
    assert_one_line_error(result, SERVE_TB, "--local-port must be a port number", "'nope'")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "no HOST given"),
        (["a", "b"], "only one HOST"),
        (["--local-port", "0", "h"], "--local-port must be a port number"),
        (["--remote-port", "70000", "h"], "--remote-port must be a port number"),
        # Bash arithmetic would wrap this to 8080: it is checked as a decimal string first.
        (["--local-port", "18446744073709559696", "h"], "--local-port must be a port number"),
        (["--remote-port", "00000000000000000000065536", "h"], "--remote-port must be a port number"),
        (["--local-port", "+80", "h"], "--local-port must be a port number"),
        (["--heartbeat", "0", "h"], "--heartbeat must be a whole number"),
        (["--heartbeat", "1.5", "h"], "--heartbeat must be a whole number"),
        (["--list", "--run", "latest", "h"], "either --list or --run"),
        (["--frobnicate", "h"], "unknown option --frobnicate"),
        (["--logdir"], "option --logdir needs a value"),
        (["-N", "h"], "ssh option -N cannot be used"),
        (["-vf", "h"], "ssh option -f cannot be used"),
        (["h", "-p"], "ssh option -p needs a value"),
    ],
)
@REMOTE
def test_serve_tb_bad_arguments(args, fragment):
    assert_one_line_error(run_script(SERVE_TB, *args), SERVE_TB, fragment)


@pytest.mark.parametrize(
    ("script", "args", "fragment"),
    [
        pytest.param(TUNNEL, [], "no HOST given", marks=REMOTE),
        pytest.param(TUNNEL, ["h", "x"], "REMOTE_PORT must be a port number", marks=REMOTE),
        pytest.param(TUNNEL, ["h", "6006", "99999"], "LOCAL_PORT must be a port number", marks=REMOTE),
        pytest.param(TUNNEL, ["h", "1", "2", "3"], "too many arguments", marks=REMOTE),
        (TB, ["--port", "x"], "--port must be a port number"),
        (TB, ["--nope"], "unknown option --nope"),
        (TB, ["a", "b"], "only one LOGDIR"),
        (TB, ["--all", "a"], "either LOGDIR or --all"),
    ],
    ids=lambda value: value.name if hasattr(value, "name") else None,
)
def test_tunnel_and_tb_bad_arguments(script, args, fragment):
    assert_one_line_error(run_script(script, *args), script, fragment)


@pytest.mark.parametrize("script", [pytest.param(TUNNEL, marks=REMOTE), TB], ids=lambda path: path.name)
def test_help(script):
    result = run_script(script, "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: ")


# ---- tb.sh -------------------------------------------------------------------------------------------


def tensorboards_for(path) -> dict[int, str]:
    return {pid: cmd for pid, cmd in processes_mentioning(str(path)).items() if "--logdir" in cmd}


@pytest.fixture
def outputs(tmp_path, training_run):  # noqa: F811
    """<tmp>/outputs with two runs; `new` holds the newest event file."""
    for name in ("old", "new"):
        shutil.copytree(training_run, tmp_path / "outputs" / name)
    (old_events,) = (tmp_path / "outputs" / "old" / "tb").iterdir()
    os.utime(old_events, (1_000_000_000, 1_000_000_000))
    return tmp_path / "outputs"


@pytest.mark.slow
def test_tb_serves_the_newest_run_on_localhost(outputs, tmp_path):
    served = Served([], tmp_path, script=TB, cwd=tmp_path)
    url = served.wait_for_url()
    assert url.startswith("http://127.0.0.1:")  # what TensorBoard binds: not localhost, which may be [::1]
    wait_until(lambda: port_listening(served.local_port), "TensorBoard to listen")
    environment = wait_until(lambda: get_json_or_none(f"{url}/data/environment"), "TensorBoard to answer")
    assert environment["data_location"] == str(outputs / "new")
    assert get_json(f"{url}/data/runs") == ["tb"]
    assert listen_addresses(served.local_port) == {"127.0.0.1"}
    assert "1 run(s), 1 with data" in served.output  # the log doctor's summary
    tensorboard = tensorboards_for(outputs)
    # tb.sh execs TensorBoard: its pid is TensorBoard's, and the data server is the other process.
    assert len(tensorboard) == 2 and served.process.pid in tensorboard
    served.stop(signal.SIGINT)  # TensorBoard's own Ctrl-C: it exits with 0
    wait_until(lambda: not tensorboards_for(outputs), "TensorBoard and its data server to exit")
    assert not port_listening(served.local_port)


@pytest.mark.slow
def test_tb_makes_a_relative_logdir_absolute_and_takes_the_next_free_port(outputs, tmp_path):
    with hold_port(6006) as held:
        start = held.getsockname()[1]
        served = Served(["outputs/old"], tmp_path, script=TB, cwd=tmp_path)
        url = served.wait_for_url()
        assert served.local_port > start
        environment = wait_until(lambda: get_json_or_none(f"{url}/data/environment"), "TensorBoard to answer")
        assert environment["data_location"] == str(outputs / "old")
        # The log doctor checks the port tb.sh chose, not the default one that it passed over.
        assert "1 run(s), 1 with data" in served.output
        assert "taken by another program" not in served.output and "already on port" not in served.output
        served.stop(signal.SIGTERM)
    wait_until(lambda: not tensorboards_for(outputs), "TensorBoard to exit")


def test_tb_missing_directory(tmp_path):
    assert_one_line_error(
        run_script(TB, "nowhere", cwd=tmp_path), TB, "log directory 'nowhere' does not exist"
    )


def test_tb_directory_without_event_files_lists_it(tmp_path):
    (tmp_path / "run" / "tb").mkdir(parents=True)
    (tmp_path / "run" / "metrics.json").write_text("{}")
    result = run_script(TB, "run", cwd=tmp_path)
    assert_one_line_error(
        result, TB, f"no event files under {tmp_path / 'run'}", "You haven't written any data"
    )
    assert "metrics.json" in result.stderr


def test_tb_port_in_use(outputs, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_script(TB, "--port", str(port), "outputs", cwd=tmp_path)
    assert_one_line_error(result, TB, f"port {port} is already in use")


def get_json_or_none(url):
    try:
        return get_json(url)
    except OSError:
        return None


def test_children_helper_sees_this_process():
    # The /proc helpers the cleanup assertions rely on must see real processes.
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert children(os.getpid()).get(child.pid) == "sleep"
        assert child.pid in processes_mentioning("sleep 30")
    finally:
        child.kill()
        child.wait()


def test_a_missing_component_skips_locally_and_fails_under_require_e2e(monkeypatch):
    monkeypatch.delenv("REQUIRE_E2E", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install"):
        require(False, "a component")
    monkeypatch.setenv("REQUIRE_E2E", "1")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_E2E=1"):
        require(False, "a component")
    require(True, "a component")


@REMOTE
def test_default_remote_dir_is_the_checkout_relative_to_home():
    checkout = SERVE_TB.parents[1]

    def default_shown(home):
        env = {**os.environ, "HOME": str(home)}
        out = subprocess.run([str(SERVE_TB), "--help"], capture_output=True, text=True, env=env).stdout
        return re.search(r"here:\s+(\S+?);", out).group(1)

    assert default_shown(checkout.parent) == checkout.name  # ~/code/proj here means ~/code/proj there
    assert default_shown("/nonexistent-home") == str(checkout)  # outside $HOME: the same absolute path
