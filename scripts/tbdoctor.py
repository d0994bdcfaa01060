"""Log doctor for TensorBoard: what a log directory holds, and why a dashboard would be empty.

    python scripts/tbdoctor.py [DIR] [--port N|0] [--brief]
    python scripts/tbdoctor.py --list-runs [DIR]      # the runs: name, date, size, event files
    python scripts/tbdoctor.py --pick latest|GLOB DIR  # run paths, NUL-separated (for serve_tb.sh)

For each run under DIR (a directory that holds event files, as TensorBoard counts runs) it lists the
event files, the tags (scalars, graph, images, other plugins), the last step and the last write time,
read with TensorBoard's own record reader. It then explains the causes of an empty dashboard that it
can see: no event files, a relative path resolved against another working directory, zero-byte or
unflushed files, a file still being written (an incomplete last record) or a corrupt one (a bad header
or a failed CRC: a writer only appends whole records, so no writer leaves those), a run that holds only
a graph, another TensorBoard already on the port.

Exit status: 0 when DIR holds data TensorBoard can show, 1 when it holds event files but no data yet,
2 when DIR is missing or holds no event files.

A command-line tool of scripts/tb.sh and scripts/serve_tb.sh, not a part of the training code. It needs
only the standard library and tensorboard, so that serve_tb.sh can send its source to a server and run it
there with `python -` before it starts TensorBoard.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import socket
import struct
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

EVENT_FILE_MARK = "events.out.tfevents."
TENSORBOARD_DEFAULT_PORT = 6006
RECORD_OVERHEAD = 16  # a TFRecord is: 8-byte length, 4-byte CRC, payload, 4-byte CRC
RECENT_WRITE_SECONDS = 120  # an incomplete last record this fresh is taken for a writer at work


@dataclass
class EventFile:
    path: Path
    size: int
    mtime: float
    records: int = 0
    bytes_read: int = 0
    corrupt: str = ""  # why the file cannot be a writer's work: a bad header or a failed CRC

    @property
    def truncated(self) -> bool:
        return not self.corrupt and (0 < self.bytes_read < self.size or (self.size > 0 and self.records == 0))


@dataclass
class Run:
    path: Path
    files: list[EventFile] = field(default_factory=list)
    scalars: dict[str, int] = field(default_factory=dict)  # tag -> number of points
    images: set[str] = field(default_factory=set)
    other: dict[str, set[str]] = field(default_factory=dict)  # plugin -> tags
    graph: bool = False
    last_step: int | None = None
    last_write: float | None = None

    @property
    def has_data(self) -> bool:
        return bool(self.scalars or self.images or self.other or self.graph)


def is_event_file(name: str) -> bool:
    return EVENT_FILE_MARK in name


def walk(top: Path):
    """os.walk that follows links to directories, as TensorBoard does (serve_tb.sh's --run GLOB serves a
    directory of links to the runs), and enters each real directory once, so a link loop ends."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        yield dirpath, dirnames, filenames


def find_runs(logdir: Path) -> list[Run]:
    """Every directory under logdir that directly holds event files, as TensorBoard finds runs."""
    runs = []
    for dirpath, _, filenames in walk(logdir):
        names = sorted(name for name in filenames if is_event_file(name))
        if names:
            run = Run(Path(dirpath))
            for name in names:
                stat = (Path(dirpath) / name).stat()
                run.files.append(EventFile(Path(dirpath) / name, stat.st_size, stat.st_mtime))
            runs.append(run)
    return runs


def read_records(event_file: EventFile):
    """The complete, CRC-checked records of an event file, in order. Stops at an incomplete last record
    (a writer at work, or one that died mid-write), and at a corrupt one, which it notes in
    `event_file.corrupt`: a length or payload whose CRC fails, or a first record that is not the
    "brain.Event:" header every writer starts with."""
    # TensorBoard's own CRC-32C (pure Python; the same check its reader makes).
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    with open(event_file.path, "rb") as stream:
        while True:
            offset = stream.tell()
            header = stream.read(12)
            if len(header) < 12:
                return
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != length_crc:
                what = "not an event file: bad header" if offset == 0 else "corrupt record length"
                event_file.corrupt = f"{what} (CRC check failed at byte {offset})"
                return
            payload = stream.read(length)
            footer = stream.read(4)
            if len(payload) < length or len(footer) < 4:
                return
            if masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                event_file.corrupt = f"corrupt record (payload CRC check failed at byte {offset})"
                return
            if offset == 0 and b"brain.Event:" not in payload:
                event_file.corrupt = (
                    "not an event file: bad header (the first record is not the file version)"
                )
                return
            event_file.records += 1
            event_file.bytes_read += length + RECORD_OVERHEAD
            yield payload


def read_run(run: Run) -> None:
    """Fills in the tags, steps and times of a run, parsed with TensorBoard's own event protos."""
    # Imported here so that `--help` and the path checks work without tensorboard installed.
    from tensorboard import data_compat
    from tensorboard.compat.proto import event_pb2

    for event_file in run.files:
        if event_file.size == 0:
            continue
        for record in read_records(event_file):
            try:
                event = data_compat.migrate_event(event_pb2.Event.FromString(record))
            except Exception as error:  # a record whose CRC holds but whose bytes are no Event
                event_file.corrupt = f"corrupt record {event_file.records} ({type(error).__name__})"
                break
            kind = event.WhichOneof("what")
            if kind == "file_version":
                continue
            if kind in ("graph_def", "meta_graph_def"):
                run.graph = True
            elif kind == "summary":
                for value in event.summary.value:
                    plugin = value.metadata.plugin_data.plugin_name or "tensors"
                    if plugin == "scalars":
                        run.scalars[value.tag] = run.scalars.get(value.tag, 0) + 1
                    elif plugin == "images":
                        run.images.add(value.tag)
                    elif plugin == "graphs":
                        run.graph = True
                    else:
                        run.other.setdefault(plugin, set()).add(value.tag)
            elif kind != "tagged_run_metadata":
                continue
            run.last_step = event.step if run.last_step is None else max(run.last_step, event.step)
            run.last_write = (
                event.wall_time if run.last_write is None else max(run.last_write, event.wall_time)
            )


def tensorboard_on_port(port: int) -> tuple[bool, str | None]:
    """(something listens on 127.0.0.1:port, the log directory it serves if it is a TensorBoard)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    except OSError:
        return False, None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/environment", timeout=2) as response:
            return True, json.load(response).get("data_location")
    except (OSError, ValueError):
        return True, None


def size_text(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def time_text(stamp: float) -> str:
    age = max(0.0, time.time() - stamp)
    if age < 120:
        ago = f"{age:.0f} s ago"
    elif age < 7200:
        ago = f"{age / 60:.0f} min ago"
    elif age < 2 * 86400:
        ago = f"{age / 3600:.0f} h ago"
    else:
        ago = f"{age / 86400:.0f} days ago"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stamp))} ({ago})"


def listing(directory: Path, limit: int = 30) -> list[str]:
    """What a directory holds, one entry a line, for the 'it holds:' part of a report."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as error:
        return [f"    (cannot list: {error.strerror})"]
    if not entries:
        return ["    (empty)"]
    lines = []
    for entry in entries[:limit]:
        try:
            kind = "/" if entry.is_dir() else f"  {size_text(entry.stat().st_size)}"
        except OSError:
            kind = "  (unreadable)"
        lines.append(f"    {entry.name}{kind}")
    if len(entries) > limit:
        lines.append(f"    ... and {len(entries) - limit} more")
    return lines


def count_event_files(directory: Path, limit: int = 1000) -> int:
    count = 0
    for _, _, filenames in walk(directory):
        count += sum(is_event_file(name) for name in filenames)
        if count >= limit:
            break
    return count


def relative_path_hints(given: str, resolved: Path) -> list[str]:
    """For a relative DIR that shows nothing: where the same relative path does hold event files."""
    if Path(given).is_absolute():
        return []
    candidates = [parent / given for parent in Path.cwd().parents]
    candidates.append(Path.home() / given)
    hints, seen = [], {resolved}
    for candidate in candidates:
        candidate = candidate.resolve()
        if candidate in seen or not candidate.is_dir():
            continue
        seen.add(candidate)
        found = count_event_files(candidate)
        if found:
            hints.append(
                f"hint: '{given}' is relative, so it was resolved against the working directory {Path.cwd()}; "
                f"{candidate} holds {found} event file(s): run from {candidate.parent} or pass the absolute path"
            )
    return hints


def examine(given: str, port: int | None, brief: bool) -> tuple[int, list[str]]:
    """The report for DIR as lines, and the exit status."""
    logdir = Path(given).expanduser().absolute()
    lines = [f"TensorBoard log doctor: {logdir}"]
    if not Path(given).expanduser().is_absolute():
        lines.append(f"  ('{given}' is relative: resolved against the working directory {Path.cwd()})")
    problems: list[str] = []
    status = 0

    if port is not None:
        listening, served = tensorboard_on_port(port)
        if listening and served is not None:
            which = "" if Path(served) == logdir else f", not {logdir}"
            problems.append(
                f"problem: a TensorBoard is already on port {port}, serving {served}{which}: a new one cannot "
                "bind that port, and the page at that port shows the old one's data"
            )
        elif listening:
            problems.append(f"note: port {port} is taken by another program (not a TensorBoard)")

    if not logdir.is_dir():
        parent = logdir.parent
        while not parent.is_dir():
            parent = parent.parent
        problems.append(f"problem: {logdir} does not exist; the nearest existing directory, {parent}, holds:")
        problems.extend(listing(parent))
        problems.extend(relative_path_hints(given, logdir))
        return 2, lines + problems

    runs = find_runs(logdir)
    if not runs:
        problems.append(
            f"problem: no event files (events.out.tfevents.*) under {logdir}, so TensorBoard shows "
            '"You haven\'t written any data to your event files". It holds:'
        )
        problems.extend(listing(logdir))
        problems.extend(relative_path_hints(given, logdir))
        return 2, lines + problems

    for run in runs:
        read_run(run)
        name = run.path.relative_to(logdir).as_posix()
        name = "." if name == "." else name
        if not brief:
            lines.append(f"run {name}")
            for event_file in run.files:
                lines.append(
                    f"  {event_file.path.name}  {size_text(event_file.size)}, {event_file.records} records, "
                    f"modified {time_text(event_file.mtime)}"
                )
            scalar_points = sum(run.scalars.values())
            tags = ", ".join(sorted(run.scalars)[:8]) + (", ..." if len(run.scalars) > 8 else "")
            lines.append(
                f"  scalars: {len(run.scalars)} tags, {scalar_points} points" + (f" ({tags})" if tags else "")
            )
            lines.append(f"  graph: {'yes' if run.graph else 'no'}")
            lines.append(
                f"  images: {len(run.images)} tags"
                + (f" ({', '.join(sorted(run.images))})" if run.images else "")
            )
            for plugin, plugin_tags in sorted(run.other.items()):
                lines.append(f"  {plugin}: {len(plugin_tags)} tags")
            if run.last_write is not None:
                lines.append(f"  last step {run.last_step}, last write {time_text(run.last_write)}")
            else:
                lines.append("  no data yet")
        for event_file in run.files:
            if event_file.size == 0:
                problems.append(
                    f"problem: run {name}: {event_file.path.name} is empty (0 bytes): the writer was created but "
                    "has not flushed yet; call writer.flush() or writer.close(), or wait for its flush_secs"
                )
            elif event_file.records == 1 and event_file.bytes_read == event_file.size:
                problems.append(
                    f"problem: run {name}: {event_file.path.name} holds only the file header: nothing was "
                    "logged to it, or it was not flushed yet"
                )
            elif event_file.corrupt:
                problems.append(
                    f"problem: run {name}: {event_file.path.name} is corrupt: {event_file.corrupt}; a writer "
                    f"only appends whole records, so this is damage, not a write in progress (TensorBoard reads "
                    f"the {event_file.records} good record(s) before it and nothing after)"
                )
            elif event_file.truncated:
                age = time.time() - event_file.mtime
                if age < RECENT_WRITE_SECONDS:
                    problems.append(
                        f"note: run {name}: {event_file.path.name} ends in an incomplete record and was written "
                        f"{age:.0f} s ago: it is being written now (the complete records are shown)"
                    )
                else:
                    problems.append(
                        f"note: run {name}: {event_file.path.name} ends in an incomplete record and has not "
                        f"changed for {time_text(event_file.mtime)}: its writer died before flushing "
                        "(the complete records are shown)"
                    )
        if run.graph and not (run.scalars or run.images or run.other):
            problems.append(
                f"problem: run {name} holds only a graph: SCALARS and IMAGES stay empty for it; open the GRAPHS tab"
            )

    with_data = [run for run in runs if run.has_data]
    last_writes = [run.last_write for run in runs if run.last_write is not None]
    summary = (
        f"{len(runs)} run(s), {len(with_data)} with data: scalars in {sum(bool(r.scalars) for r in runs)}, "
        f"graph in {sum(r.graph for r in runs)}, images in {sum(bool(r.images) for r in runs)}"
    )
    if last_writes:
        summary += f"; last write {time_text(max(last_writes))}"
    lines.append(summary)
    if not with_data:
        problems.append(
            f"problem: the event files under {logdir} hold no data yet, so TensorBoard shows "
            '"You haven\'t written any data to your event files"'
        )
        status = 1
    return status, lines + problems


@dataclass
class RunDir:
    """A run as people name it: the directory above tb/ (or the one that holds the event files), or a
    directory with a Hydra .hydra/ record but no event files yet."""

    name: str
    path: Path
    mtime: float
    size: int
    event_files: int


def run_directories(logdir: Path) -> list[RunDir]:
    """Every run under logdir, newest first (by its newest event file, else its own mtime)."""
    found: dict[Path, list[float]] = {}
    for dirpath, dirnames, filenames in walk(logdir):
        directory = Path(dirpath)
        events = [directory / name for name in filenames if is_event_file(name)]
        if events:
            run = directory.parent if directory.name == "tb" and directory != logdir else directory
            found.setdefault(run, []).extend(path.stat().st_mtime for path in events)
        if ".hydra" in dirnames:
            found.setdefault(directory, [])
    runs = []
    for path, stamps in found.items():
        size = 0
        for dirpath, _, filenames in walk(path):
            for name in filenames:
                with contextlib.suppress(OSError):  # a file removed while we walk
                    size += (Path(dirpath) / name).lstat().st_size
        name = path.relative_to(logdir).as_posix()
        runs.append(RunDir(name, path, max(stamps) if stamps else path.stat().st_mtime, size, len(stamps)))
    return sorted(runs, key=lambda run: run.mtime, reverse=True)


def shown(text: str) -> str:
    """A name on one line: control characters (a newline in a directory name) as escapes."""
    return text if text.isprintable() else repr(text)[1:-1]


def list_runs(logdir: Path) -> list[str]:
    runs = run_directories(logdir)
    if not runs:
        return [f"(no runs under {shown(str(logdir))}: no event files, no .hydra/ directories)"]
    width = max(len(shown(run.name)) for run in runs)
    lines = [f"{'run':<{width}}  {'last write':<16}  {'size':>8}  event files"]
    for run in runs:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.mtime))
        events = f"yes ({run.event_files})" if run.event_files else "no"
        lines.append(f"{shown(run.name):<{width}}  {stamp:<16}  {size_text(run.size):>8}  {events}")
    return lines


def pick_runs(logdir: Path, selection: str) -> list[Path]:
    """The runs with event files that `selection` names: 'latest' (the newest one), or a glob matched
    against run names and their last part (a text without *?[ matches as a substring)."""
    runs = [run for run in run_directories(logdir) if run.event_files]
    if selection == "latest":
        return [runs[0].path] if runs else []
    pattern = selection if any(c in selection for c in "*?[") else f"*{selection}*"
    return [
        run.path
        for run in sorted(runs, key=lambda run: run.name)
        if fnmatch.fnmatchcase(run.name, pattern) or fnmatch.fnmatchcase(run.path.name, pattern)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/tbdoctor.py",
        description="List what a TensorBoard log directory holds and explain why a dashboard would be empty.",
        epilog="Exit status: 0 data to show, 1 event files without data, 2 DIR missing or without event files.",
    )
    parser.add_argument("dir", nargs="?", default="outputs", help="log directory (default: outputs)")
    parser.add_argument(
        "--port",
        type=int,
        default=TENSORBOARD_DEFAULT_PORT,
        help="check whether a TensorBoard already runs on this port of 127.0.0.1; 0: no check, for a "
        f"caller that picks a free port itself (default: {TENSORBOARD_DEFAULT_PORT})",
    )
    parser.add_argument(
        "--brief", action="store_true", help="only the summary and the problems, not every run"
    )
    parser.add_argument(
        "--list-runs", action="store_true", help="list the runs (name, last write, size, event files)"
    )
    parser.add_argument(
        "--pick", metavar="latest|GLOB", help="print the paths of the runs it names, NUL-separated"
    )
    args = parser.parse_args(argv)
    if args.list_runs or args.pick:
        logdir = Path(args.dir).expanduser().absolute()
        if not logdir.is_dir():
            print(f"{logdir} does not exist", file=sys.stderr)
            return 2
        if args.list_runs:
            print("\n".join(list_runs(logdir)), flush=True)
            return 0
        picked = pick_runs(logdir, args.pick)
        sys.stdout.write("".join(f"{path}\0" for path in picked))
        return 0 if picked else 2
    status, lines = examine(args.dir, args.port or None, args.brief)
    print("\n".join(lines), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
