"""One process trains in a run directory at a time.

A second `resume=` of a run that is still training (or resumed twice by accident) would write the same
checkpoints and event files from two processes. The run holds `<run dir>/.lock` (its pid and host) while it
trains, created atomically; the lock of a process that is gone (killed with -9, a crashed node) is taken
over, and a live one refuses the second run in one line.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from utils.config import ConfigError

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class RunLock:
    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._owner_alive():
                    raise ConfigError(
                        f"{self.path.parent} is in use by {self._describe()}: one run at a time"
                    ) from None
                # Stale: its process is gone. Replace it atomically, so two newcomers cannot both take it.
                tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
                tmp.write_text(me)
                os.replace(tmp, self.path)
                if self.path.read_text() == me:
                    self.held = True
                    return self
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise ConfigError(f"{self.path.parent} is in use by {self._describe()}: one run at a time")

    def _read(self) -> tuple[int | None, str]:
        try:
            pid, _, host = self.path.read_text().strip().partition(" ")
            return int(pid), host
        except (OSError, ValueError):
            return None, ""

    def _owner_alive(self) -> bool:
        pid, host = self._read()
        if pid is None:
            return False  # empty or garbled: a writer died mid-write
        if host and host != socket.gethostname():
            return True  # another machine's process: we cannot tell, so we do not take it
        return pid != os.getpid() and _alive(pid)

    def _describe(self) -> str:
        pid, host = self._read()
        return f"process {pid} on {host or 'this host'}"

    def release(self) -> None:
        if self.held:
            pid, _ = self._read()
            if pid == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
