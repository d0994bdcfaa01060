"""Files that a later command reads (checkpoints, metrics.json, env.json): written whole or not at all.

Each is written to a temp file in its own directory, fsynced, and renamed over its name (os.replace is
atomic on POSIX), and the rename made durable: a reader, a kill -9, a signal or a full disk finds the old
file or the new one, never half of one. A finished run is one whose metrics.json reads back whole.

No torch here: life/run.py reads `out_of_space` on the way out of any run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path


def _file_mode() -> int:
    """The mode open() gives a new file under this process's umask (os.umask can only be read by setting)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# mkstemp makes its file 0600; these files get the mode any other new file would, so that a shared
# project directory stays readable to the group, as torch.save's own files would be.
FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb"):
    """Open a temp file beside `path` for writing; on a clean exit it replaces `path` whole, on any error
    (or signal) it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself survives a power cut


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """As atomic_file, for a writer that takes a path rather than a file (torch.export.save, an ONNX
    exporter): it writes the temp file whose path this yields, and may read it back to check it before
    the clean exit makes it `path`. The temp file ends in `path`'s suffix, which such writers go by."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: str | os.PathLike, value) -> None:
    """`value` as indented JSON, atomically."""
    text = json.dumps(value, indent=2) + "\n"
    with atomic_file(path, "w") as f:
        f.write(text)


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON object written by write_json; None when the file is missing, not whole or not an object
    (one left half-written by an older version, or by hand)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def fsync_dir(path: str | os.PathLike) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def out_of_space(err: BaseException) -> bool:
    """ENOSPC, a quota, a file-size limit, on err or the errors behind it; torch's zip writer reports them
    as RuntimeError ("enforce fail", "failed writing file"), with the OSError, when there is one, as cause."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if isinstance(e, RuntimeError) and ("failed writing" in str(e) or "enforce fail" in str(e)):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def space_left(path: str | os.PathLike) -> str:
    """`12.3 MiB free`, of the file system holding path (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"
