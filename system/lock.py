"""One process trains in a run directory at a time.

A second `resume=` of a run that is still training (or resumed twice by accident) would write the same
checkpoints and event files from two processes. The run holds an OS lock, a POSIX record lock
(`fcntl.lockf`) on `<run dir>/.lock`, while it trains; the file also holds the holder's pid and host, for
the message that refuses a second run in one line. The kernel releases the lock when the holder's process
ends, however it ends (kill -9 included), so there is no "stale lock" to guess about and no race between
two newcomers: exactly one lock call succeeds.

A POSIX lock, not `flock`: it belongs to the process, not to the open file, so the DataLoader workers that
the run forks do not hold it too (with `flock` they did, and a resume right after a kill -9 was refused
until they noticed their parent was gone). The price of POSIX locks, that closing any descriptor of the
file in the holder lets go, is kept away by never opening `.lock` elsewhere in the holder.

The holder removes the file when it is done. A newcomer that opened the file just before that removal would
hold a lock on a file no longer in the directory, so after locking it checks that the path still names the
file it locked, and starts over if not.

File systems:
- Local disks, tmpfs, Lustre and GPFS: the lock is exact.
- NFS: a POSIX lock is an NFS byte-range lock, which every client sees when the mount has locking (NFSv4,
  or NFSv3 with lockd; the default). With `-o nolock` (or `local_lock=posix`) the lock is local to each
  machine: two runs on two machines are then not kept apart. A lock held by a machine that crashed is
  freed by the NFS server when the machine's lease runs out (about 90 s on NFSv4).
- A file system without locks at all (ENOLCK/EOPNOTSUPP): the run goes on unlocked, with a warning that
  says so; keep to one run per directory by hand there.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from system.errors import ConfigError

LOCK_NAME = ".lock"
# lockf fails with one of these where the file system has no locks at all.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunLock:
    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EAGAIN):  # held by another process
                    holder = self._describe(fd)
                    os.close(fd)
                    raise ConfigError(
                        f"{self.path.parent} is in use by {holder}: one run at a time"
                    ) from None
                if err.errno not in _NO_LOCKS:
                    os.close(fd)
                    raise
                logging.getLogger("train").warning(
                    "%s: this file system has no locks (%s): a second run in this directory is not refused",
                    self.path,
                    os.strerror(err.errno),
                )
            if self._still_there(fd):
                break
            os.close(fd)  # the holder removed it between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd, self.held = fd, True
        return self

    def _still_there(self, fd: int) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def _describe(self, fd: int) -> str:
        try:
            pid, _, host = os.pread(fd, 4096, 0).decode().strip().partition(" ")
            return f"process {int(pid)} on {host or 'this host'}"
        except (OSError, ValueError):
            return "another process (it has not written its pid yet)"

    def in_use(self) -> bool:
        """Whether a process holds this run's lock now (resume=latest skips such a run). Read from
        /proc/locks, which takes no lock itself; elsewhere a shared lock is tried and let go at once."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        try:
            table = Path("/proc/locks").read_text()
        except OSError:
            return self._probe()
        me = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        return any(len(f) > 5 and f[1] == "POSIX" and f[5] == me for f in map(str.split, table.splitlines()))

    _owner_alive = in_use  # the name store/resume_target.py calls

    def _probe(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            return fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB) is not None  # False: it was free
        except OSError as err:
            return err.errno in (errno.EACCES, errno.EAGAIN)  # else no locks here: none can be held
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.held and self._fd is not None:
            # Remove the file while still holding the lock, then let go: a newcomer either locked it before
            # (refused) or finds the path gone or new (and starts over).
            if self._still_there(self._fd):
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd, self.held = None, False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
