"""Real components for the remote-TensorBoard tests, shared by their test modules.

- `require(...)`: skip with a reason when a system component (sshd, chromium, playwright) is missing,
  or fail instead when REQUIRE_E2E=1 (CI installs them all, so a skip there would hide a broken setup).
- `sshd`: a throwaway OpenSSH server on 127.0.0.1 (Debian's /usr/sbin/sshd, keys from ssh-keygen, host
  key pinned in a known_hosts file), with an ssh client config whose aliases the scripts use as HOST.
  Its sessions get HOME=<its directory>/home (sshd's SetEnv), so that `~` on "the server" is a temporary
  directory; a second host key (`other_host_key`) stands for a server whose key changed, and the alias
  HOST_NEW reaches it with an empty known_hosts and ssh's default StrictHostKeyChecking (ask).
- `training_run`: one short real training run per session, made by train.py.
- `/proc` scans: which processes mention a path, which ports listen and on which address.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVE_TB = ROOT / "scripts" / "serve_tb.sh"
TUNNEL = ROOT / "scripts" / "tunnel.sh"
TB = ROOT / "scripts" / "tb.sh"
SSHD = Path("/usr/sbin/sshd")
CHROMIUM = Path("/usr/bin/chromium")
HOST = "stb-test"  # the test sshd, as an ssh config alias
HOST_BAD_KEY = "stb-badkey"  # the same server, with a key it does not accept
HOST_CLOSED = "stb-closed"  # a port where nothing listens
HOST_NEW = "stb-new"  # the same server, unknown to its known_hosts, StrictHostKeyChecking at the default
URL = re.compile(r"http://[^\s/]+:[0-9]+/")  # what the scripts print for the browser
DEADLINE = 90  # seconds: a guard against hangs, not a timing assertion

# serve_tb.sh remembers the remote directory of each checkout and host in $XDG_STATE_HOME/serve_tb: the
# scripts that the tests start keep that memory in a directory of the test run, not in the user's home.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="serve_tb_state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], ignore_errors=True)


def require(available: bool, what: str) -> None:
    """Skip the test when `what` is missing, or fail when REQUIRE_E2E=1 says it must be there."""
    if available:
        return
    if os.environ.get("REQUIRE_E2E") == "1":
        pytest.fail(f"{what} is missing, and REQUIRE_E2E=1 requires it (see .ci/run)")
    pytest.skip(f"{what} is missing (apt-get install openssh-server openssh-client chromium; see .ci/run)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_free_port(start: int) -> int:
    port = start
    while port_listening(port):
        port += 1
    return port


def hold_port(start: int) -> socket.socket:
    """A listening socket on the first port from `start` that nothing listens on (as the scripts see it)."""
    port = start
    while True:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT leftovers of other tests
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            return sock
        except OSError:
            sock.close()
            port += 1


# ---- /proc scans ----------------------------------------------------------------------------------


def listening_sockets() -> dict[int, list[tuple[str, int]]]:
    """socket inode -> [(local address, port)] for every TCP socket in LISTEN state."""
    found: dict[int, list[tuple[str, int]]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            if len(address) == 8:
                text = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
            else:
                words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8)]
                text = socket.inet_ntop(socket.AF_INET6, b"".join(words))
            found.setdefault(int(fields[9]), []).append((text, int(port, 16)))
    return found


def listen_addresses(port: int) -> set[str]:
    """The addresses that listen on a TCP port (empty when the port is free)."""
    return {addr for entries in listening_sockets().values() for addr, p in entries if p == port}


def port_listening(port: int) -> bool:
    return bool(listen_addresses(port))


def processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line, for every process whose command line contains `text`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found[int(entry.name)] = cmdline
    return found


def processes_in(directory: str) -> dict[int, str]:
    """pid -> command line, for every process whose working directory is `directory` or below it."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == directory or cwd.startswith(directory.rstrip("/") + "/"):
            found[int(entry.name)] = cmdline
    return found


def ports_of(pids) -> set[int]:
    """The TCP ports on which the given processes listen."""
    sockets = listening_sockets()
    ports = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:["):
                ports.update(port for _, port in sockets.get(int(link[8:-1]), []))
    return ports


def children(pid: int) -> dict[int, str]:
    """pid -> command name of the direct children of a process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(rest[1]) == pid:
            found[int(entry.name)] = name
    return found


def as_from_a_terminal() -> None:
    """In the child, before exec: the stop signals at their defaults, as a terminal's shell starts a
    command. Under nohup, or as a background job of a script, they arrive ignored, and bash can trap no
    signal that was ignored when it started: the script would never see the SIGHUP or Ctrl-C sent here."""
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line, for every process below `pid` in the process tree (not `pid` itself)."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = commands[child]
                frontier.append(child)
    return found


def wait_until(condition, what: str, deadline: float = 30):
    """Polls `condition` until it returns something true; fails with `what` past the deadline."""
    end = time.monotonic() + deadline
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.2)


def get_json(url: str):
    import json

    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


# ---- the OpenSSH server ----------------------------------------------------------------------------


@dataclass
class SSHServer:
    port: int
    client_config: Path
    directory: Path

    @property
    def home(self) -> Path:
        """$HOME in the server's sessions."""
        return self.directory / "home"

    @property
    def pid(self) -> int:
        """The listening sshd: every session on the server runs below it."""
        return int((self.directory / "sshd.pid").read_text())

    @property
    def ssh_args(self) -> list[str]:
        """What the scripts get before HOST: the client config that defines the aliases."""
        return ["-F", str(self.client_config)]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)


def start_sshd(directory: Path) -> tuple[subprocess.Popen, SSHServer]:
    require(
        SSHD.exists() and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None,
        "OpenSSH (/usr/sbin/sshd, ssh, ssh-keygen)",
    )
    _keygen(directory / "host_key")
    _keygen(directory / "client_key")
    _keygen(directory / "other_key")
    _keygen(directory / "other_host_key")  # what known_hosts holds for a server whose key "changed"
    (directory / "home").mkdir()
    shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    user = pwd.getpwuid(os.getuid()).pw_name
    for attempt in range(5):
        port = free_port()
        (directory / "sshd_config").write_text(
            f"""Port {port}
ListenAddress 127.0.0.1
HostKey {directory}/host_key
PidFile {directory}/sshd.pid
AuthorizedKeysFile {directory}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding local
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
SetEnv HOME={directory}/home
"""
        )
        log = (directory / "sshd.log").open("w")
        process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(directory / "sshd_config")], stdout=log, stderr=log
        )
        end = time.monotonic() + 20
        while process.poll() is None and not port_listening(port) and time.monotonic() < end:
            time.sleep(0.05)
        if process.poll() is None and port_listening(port):
            break
        process.kill()
        process.wait()
        if attempt == 4:
            # Installed but unable to run here (say, no /run/sshd for a non-root user): skip locally, fail in CI.
            require(
                False, f"a working sshd (it did not start: {(directory / 'sshd.log').read_text().strip()})"
            )

    host_key = (directory / "host_key.pub").read_text().split()
    (directory / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (directory / "known_hosts_empty").touch()
    closed_port = free_port()
    common = f"""  HostName 127.0.0.1
  User {user}
  IdentitiesOnly yes
  IdentityAgent none
  GlobalKnownHostsFile /dev/null
  UpdateHostKeys no
"""
    pinned = f"  UserKnownHostsFile {directory}/known_hosts\n  StrictHostKeyChecking yes\n{common}"
    # HOST_NEW: StrictHostKeyChecking left at ssh's default (ask), as in a user's ~/.ssh/config.
    unknown = f"  UserKnownHostsFile {directory}/known_hosts_empty\n{common}"
    (directory / "ssh_config").write_text(
        f"Host {HOST}\n  Port {port}\n  IdentityFile {directory}/client_key\n{pinned}"
        f"Host {HOST_BAD_KEY}\n  Port {port}\n  IdentityFile {directory}/other_key\n{pinned}"
        f"Host {HOST_CLOSED}\n  Port {closed_port}\n  IdentityFile {directory}/client_key\n{pinned}"
        f"Host {HOST_NEW}\n  Port {port}\n  IdentityFile {directory}/client_key\n{unknown}"
    )
    server = SSHServer(port, directory / "ssh_config", directory)
    check = subprocess.run(
        ["ssh", *server.ssh_args, "-o", "BatchMode=yes", HOST, "echo ok"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.stdout.strip() != "ok":
        process.kill()
        pytest.fail(f"cannot log in to the test sshd: {check.stderr}\n{(directory / 'sshd.log').read_text()}")
    return process, server


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    process, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    process.terminate()
    process.wait(timeout=30)


# ---- a training run ------------------------------------------------------------------------------


def make_training_run(run_dir: Path) -> None:
    """A real short training run of the template, with its graph, into run_dir."""
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "trainer.max_epochs=1",
        "trainer.limit_batches=5",
        "logging.graph=true",
        "logging.progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    assert list(run_dir.glob("tb/events.out.tfevents.*")), f"train.py wrote no event files under {run_dir}/tb"


@pytest.fixture(scope="session")
def training_run(tmp_path_factory) -> Path:
    """<tmp>/project/outputs/run1, a run directory with its tb/ event files; made once per session."""
    run_dir = tmp_path_factory.getbasetemp() / "project" / "outputs" / "run1"
    if not run_dir.exists():
        make_training_run(run_dir)
    return run_dir


def tensorboard_env_command() -> str:
    """The --env that puts this test's tensorboard on the server's PATH (the login shell lacks it)."""
    bindir = Path(sys.executable).parent
    assert (bindir / "tensorboard").exists(), f"no tensorboard next to {sys.executable}"
    if (bindir / "activate").exists():
        return f"source {shlex.quote(str(bindir / 'activate'))}"
    return f"export PATH={shlex.quote(str(bindir))}:$PATH"


def serve_args(server, project, *extra) -> list[str]:
    """serve_tb.sh's arguments against the test sshd, serving `project` with this venv's TensorBoard."""
    return [
        *server.ssh_args,
        "--no-browser",
        "--remote-dir",
        str(project),
        "--env",
        tensorboard_env_command(),
        *extra,
        HOST,
    ]


# ---- a running serve_tb.sh -----------------------------------------------------------------------


class Served:
    """One of the scripts (serve_tb.sh unless told) running in the background, with its output in files."""

    def __init__(
        self,
        args: list[str],
        directory: Path,
        script: Path = SERVE_TB,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.stdout_path = directory / f"{script.stem}.stdout"
        self.stderr_path = directory / f"{script.stem}.stderr"
        self.name = script.name
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [str(script), *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                preexec_fn=as_from_a_terminal,
            )  # fmt: skip
        self.url = ""

    @property
    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def wait_for_url(self) -> str:
        """The first URL the script prints, as printed (the tests check which host it names)."""

        def url():
            found = URL.search(self.stdout_path.read_text())
            if found:
                return found[0]
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.output}")
            return None

        self.url = wait_until(url, f"{self.name} to print the URL", DEADLINE).rstrip("/")
        return self.url

    @property
    def local_port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def ssh_client(self) -> int:
        """pid of the ssh connection that the script holds open."""
        found = [pid for pid, name in children(self.process.pid).items() if name == "ssh"]
        assert len(found) == 1, f"expected one ssh child, found {found}"
        return found[0]

    def stop(self, sig=signal.SIGINT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=DEADLINE)
