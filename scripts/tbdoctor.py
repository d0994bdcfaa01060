"""Log doctor for TensorBoard: what a log directory holds, and why a dashboard would be empty.

    python scripts/tbdoctor.py [DIR] [--port N|0] [--brief]
    python scripts/tbdoctor.py --list-runs [DIR]      # the runs: name, date, size, event files
    python scripts/tbdoctor.py --pick latest|GLOB DIR  # run paths, NUL-separated (for serve_tb.sh)

For each run under DIR (a directory that holds event files, as TensorBoard counts runs): its event files,
tags (scalars, graph, images, other plugins), last step and last write, read with TensorBoard's own record
reader. Then the causes of an empty dashboard it can see: no event files, a relative path resolved against
another working directory, empty or unflushed files, a file being written (an incomplete last record) or a
corrupt one (a bad header or CRC: writers append whole records only), a run with only a graph, another
TensorBoard already on the port. Exit status: 0 when DIR holds data TensorBoard can show, 1 when it holds
event files but no data yet, 2 when DIR is missing or holds no event files.

A tool of scripts/tb.sh and scripts/serve_tb.sh, not of the training code. One file that needs only the
standard library and tensorboard: serve_tb.sh sends this source to the server, which runs it with `python -`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

EVENT_FILE_MARK = "events.out.tfevents."
RECENT_WRITE_SECONDS = 120  # an incomplete last record this fresh is taken for a writer at work
BAD_HEADER = "not an event file: bad header"
NO_DATA = 'TensorBoard shows "You haven\'t written any data to your event files"'
# How time_text rounds an age: below the bound, counted in units of so many seconds.
AGE_UNITS = ((120, 1, "s"), (7200, 60, "min"), (2 * 86400, 3600, "h"), (float("inf"), 86400, "days"))


@dataclass
class EventFile:
    path: Path
    size: int
    mtime: float
    records: int = 0
    bytes_read: int = 0
    corrupt: str = ""  # why the file cannot be a writer's work: a bad header or a failed CRC

    @classmethod
    def at(cls, path: Path) -> EventFile:
        stat = path.stat()
        return cls(path, stat.st_size, stat.st_mtime)


@dataclass
class Run:
    path: Path
    files: list[EventFile] = field(default_factory=list)
    # plugin (scalars, images, histograms...) -> tag -> number of points
    tags: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    graph: bool = False
    last_step: int | None = None
    last_write: float | None = None

    @property
    def changed(self) -> float:
        """When the run last changed: its newest event file, else (none yet) its directory."""
        return max(f.mtime for f in self.files) if self.files else self.path.stat().st_mtime


def event_names(filenames) -> list[str]:
    return sorted(name for name in filenames if EVENT_FILE_MARK in name)


def walk(top: Path):
    """os.walk as (directory Path, dirnames, filenames) that follows links to directories as TensorBoard
    does (serve_tb.sh's --run GLOB serves a directory of links) and enters each real directory once."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        yield Path(dirpath), dirnames, filenames


def find_runs(logdir: Path) -> list[Run]:
    """Every directory under logdir that directly holds event files, as TensorBoard finds runs."""
    runs = []
    for directory, _, filenames in walk(logdir):
        if names := event_names(filenames):
            runs.append(Run(directory, [EventFile.at(directory / name) for name in names]))
    return runs


def read_events(event_file: EventFile):
    """The events of an event file's complete, CRC-checked records, read as TensorBoard reads them. Stops at
    an incomplete last record (a writer at work, or one that died mid-write) and at a corrupt one, noted in
    `event_file.corrupt`: a failed CRC, a first record that is not the "brain.Event:" header, no Event."""
    # Imported here so that `--help` and the path checks work without tensorboard installed.
    from tensorboard import data_compat
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    with open(event_file.path, "rb") as stream:
        while len(header := stream.read(12)) == 12:  # a record: length, its CRC, payload, the payload's CRC
            offset = event_file.bytes_read  # the records before this one were all read whole
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                what = BAD_HEADER if offset == 0 else "corrupt record length"
                event_file.corrupt = f"{what} (CRC check failed at byte {offset})"
                return
            payload, footer = stream.read(length), stream.read(4)
            if len(payload) < length or len(footer) < 4:
                return
            if masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                event_file.corrupt = f"corrupt record (payload CRC check failed at byte {offset})"
                return
            if offset == 0 and b"brain.Event:" not in payload:
                event_file.corrupt = f"{BAD_HEADER} (the first record is not the file version)"
                return
            event_file.records += 1
            event_file.bytes_read = stream.tell()
            try:
                event = data_compat.migrate_event(event_pb2.Event.FromString(payload))
            except Exception as error:  # a record whose CRC holds but whose bytes are no Event
                event_file.corrupt = f"corrupt record {event_file.records} ({type(error).__name__})"
                return
            yield event


def read_run(run: Run) -> None:
    """Fills in the tags, steps and times of a run."""
    for event_file in run.files:
        for event in read_events(event_file):
            kind = event.WhichOneof("what")
            if kind not in ("graph_def", "meta_graph_def", "summary", "tagged_run_metadata"):
                continue  # the file version, log messages, session starts: nothing a dashboard shows
            run.graph |= kind in ("graph_def", "meta_graph_def")
            for value in event.summary.value:  # none unless kind is summary
                plugin = value.metadata.plugin_data.plugin_name or "tensors"
                if plugin == "graphs":
                    run.graph = True
                else:
                    run.tags[plugin][value.tag] += 1
            run.last_step = event.step if run.last_step is None else max(run.last_step, event.step)
            run.last_write = max(run.last_write or 0.0, event.wall_time)  # wall times are past 1970


def port_problems(port: int, logdir: Path) -> list[str]:
    """A TensorBoard (and the directory it serves) or another program already on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return []  # nothing listens there
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/environment", timeout=2) as response:
            served = json.load(response).get("data_location")
    except (OSError, ValueError):
        served = None
    if served is None:
        return [f"note: port {port} is taken by another program (not a TensorBoard)"]
    which = "" if Path(served) == logdir else f", not {logdir}"
    return [
        f"problem: a TensorBoard is already on port {port}, serving {served}{which}: a new one cannot "
        "bind that port, and the page at that port shows the old one's data"
    ]


def size_text(size: float) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def time_text(stamp: float) -> str:
    age = max(0.0, time.time() - stamp)
    count, unit = next((age / seconds, unit) for below, seconds, unit in AGE_UNITS if age < below)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stamp))} ({count:.0f} {unit} ago)"


def listing(directory: Path, limit: int = 30) -> list[str]:
    """What a directory holds, one entry a line, for the 'it holds:' part of a report."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as error:
        return [f"    (cannot list: {error.strerror})"]
    lines = []
    for entry in entries[:limit]:
        try:
            kind = "/" if entry.is_dir() else f"  {size_text(entry.stat().st_size)}"
        except OSError:
            kind = "  (unreadable)"
        lines.append(f"    {entry.name}{kind}")
    if len(entries) > limit:
        lines.append(f"    ... and {len(entries) - limit} more")
    return lines or ["    (empty)"]


def relative_path_hints(given: str, resolved: Path) -> list[str]:
    """For a relative DIR that shows nothing: where the same relative path does hold event files."""
    if Path(given).is_absolute():
        return []
    hints = []
    places = [*(parent / given for parent in Path.cwd().parents), Path.home() / given]
    for candidate in dict.fromkeys(place.resolve() for place in places):  # each place once, in order
        if candidate != resolved and (found := sum(len(run.files) for run in find_runs(candidate))):
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
    problems = [] if port is None else port_problems(port, logdir)

    runs = find_runs(logdir)
    if not runs:
        nearest = next(directory for directory in (logdir, *logdir.parents) if directory.is_dir())
        if nearest == logdir:
            what = f"no event files ({EVENT_FILE_MARK}*) under {logdir}, so {NO_DATA}. It holds:"
        else:
            what = f"{logdir} does not exist; the nearest existing directory, {nearest}, holds:"
        problems.append(f"problem: {what}")
        return 2, lines + problems + listing(nearest) + relative_path_hints(given, logdir)

    for run in runs:
        read_run(run)
        name = run.path.relative_to(logdir).as_posix()
        if not brief:
            lines.extend(run_report(run, name))
        for event_file in run.files:
            if found := file_problem(event_file):
                problems.append(f"{found[0]}: run {name}: {event_file.path.name} {found[1]}")
        if run.graph and not any(run.tags.values()):
            problems.append(
                f"problem: run {name} holds only a graph: SCALARS and IMAGES stay empty for it; open the GRAPHS tab"
            )

    with_data = [run for run in runs if run.graph or any(run.tags.values())]
    last_write = max((run.last_write for run in runs if run.last_write is not None), default=None)
    having = {plugin: sum(bool(run.tags[plugin]) for run in runs) for plugin in ("scalars", "images")}
    summary = (
        f"{len(runs)} run(s), {len(with_data)} with data: scalars in {having['scalars']}, "
        f"graph in {sum(run.graph for run in runs)}, images in {having['images']}"
    )
    lines.append(summary + (f"; last write {time_text(last_write)}" if last_write is not None else ""))
    if not with_data:
        problems.append(f"problem: the event files under {logdir} hold no data yet, so {NO_DATA}")
    return (0 if with_data else 1), lines + problems


def run_report(run: Run, name: str) -> list[str]:
    """One run for people: its event files, its tags by dashboard, its last step and write."""
    lines = [f"run {name}"]
    for event_file in run.files:
        lines.append(
            f"  {event_file.path.name}  {size_text(event_file.size)}, {event_file.records} records, "
            f"modified {time_text(event_file.mtime)}"
        )
    scalars, images = run.tags["scalars"], run.tags["images"]
    names = ", ".join(sorted(scalars)[:8]) + (", ..." if len(scalars) > 8 else "")
    points = sum(scalars.values())  # not Counter.total(): the server's python may be 3.8
    lines.append(f"  scalars: {len(scalars)} tags, {points} points" + (f" ({names})" if names else ""))
    lines.append(f"  graph: {'yes' if run.graph else 'no'}")
    lines.append(f"  images: {len(images)} tags" + (f" ({', '.join(sorted(images))})" if images else ""))
    for plugin, tags in sorted(run.tags.items()):
        if tags and plugin not in ("scalars", "images"):
            lines.append(f"  {plugin}: {len(tags)} tags")
    if run.last_write is None:
        return [*lines, "  no data yet"]
    return [*lines, f"  last step {run.last_step}, last write {time_text(run.last_write)}"]


def file_problem(event_file: EventFile) -> tuple[str, str] | None:
    """('problem' or 'note', why) for an event file that TensorBoard shows in part or not at all."""
    if event_file.size == 0:
        return "problem", (
            "is empty (0 bytes): the writer was created but has not flushed yet; call writer.flush() or "
            "writer.close(), or wait for its flush_secs"
        )
    if event_file.records == 1 and event_file.bytes_read == event_file.size:
        return "problem", "holds only the file header: nothing was logged to it, or it was not flushed yet"
    if event_file.corrupt:
        return "problem", (
            f"is corrupt: {event_file.corrupt}; a writer only appends whole records, so this is damage, not "
            f"a write in progress (TensorBoard reads the {event_file.records} good record(s) before it and "
            "nothing after)"
        )
    if event_file.records and event_file.bytes_read >= event_file.size:
        return None  # whole records to the end (the file may have grown since its size was taken)
    age = time.time() - event_file.mtime
    if age < RECENT_WRITE_SECONDS:
        why = f"was written {age:.0f} s ago: it is being written now"
    else:
        why = f"has not changed for {time_text(event_file.mtime)}: its writer died before flushing"
    return "note", f"ends in an incomplete record and {why} (the complete records are shown)"


def run_directories(logdir: Path) -> list[Run]:
    """Every run under logdir as people name it, newest first: the directory above tb/ (or the one that
    holds the event files), or a directory with a Hydra .hydra/ record but no event files yet."""
    runs: dict[Path, Run] = {}
    for directory, dirnames, filenames in walk(logdir):
        if names := event_names(filenames):
            path = directory.parent if directory.name == "tb" and directory != logdir else directory
            runs.setdefault(path, Run(path)).files.extend(EventFile.at(directory / name) for name in names)
        if ".hydra" in dirnames:
            runs.setdefault(directory, Run(directory))
    return sorted(runs.values(), key=lambda run: run.changed, reverse=True)


def tree_size(top: Path) -> int:
    """The bytes of the files below top; a link to a file counts as the link, not the file."""
    size = 0
    for directory, _, filenames in walk(top):
        for name in filenames:
            with contextlib.suppress(OSError):  # a file removed while we walk
                size += (directory / name).lstat().st_size
    return size


def shown(text: str) -> str:
    """A name on one line: control characters (a newline in a directory name) as escapes."""
    return text if text.isprintable() else repr(text)[1:-1]


def list_runs(logdir: Path) -> list[str]:
    runs = run_directories(logdir)
    if not runs:
        return [f"(no runs under {shown(str(logdir))}: no event files, no .hydra/ directories)"]
    rows = [(shown(run.path.relative_to(logdir).as_posix()), run) for run in runs]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'run':<{width}}  {'last write':<16}  {'size':>8}  event files"]
    for name, run in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.changed))
        events = f"yes ({len(run.files)})" if run.files else "no"
        lines.append(f"{name:<{width}}  {stamp:<16}  {size_text(tree_size(run.path)):>8}  {events}")
    return lines


def pick_runs(logdir: Path, selection: str) -> list[Path]:
    """The runs with event files that `selection` names: 'latest' (the newest one), or a glob matched
    against run names and their last part (a text without *?[ matches as a substring)."""
    runs = [run.path for run in run_directories(logdir) if run.files]
    if selection == "latest":
        return runs[:1]
    pattern = selection if any(c in selection for c in "*?[") else f"*{selection}*"
    named = sorted((path.relative_to(logdir).as_posix(), path) for path in runs)
    return [path for name, path in named if fnmatchcase(name, pattern) or fnmatchcase(path.name, pattern)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/tbdoctor.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dir", nargs="?", default="outputs", help="log directory (default: outputs)")
    parser.add_argument(
        "--port",
        type=int,
        default=6006,  # TensorBoard's own
        help="check whether a TensorBoard already runs on this port of 127.0.0.1; 0: no check, for a "
        "caller that picks a free port itself (default: %(default)s)",
    )
    parser.add_argument("--brief", action="store_true", help="only the summary and the problems")
    parser.add_argument("--list-runs", action="store_true", help="list the runs, newest first")
    parser.add_argument("--pick", metavar="latest|GLOB", help="print the runs it names, NUL-separated")
    args = parser.parse_args(argv)
    logdir = Path(args.dir).expanduser().absolute()
    if (args.list_runs or args.pick) and not logdir.is_dir():
        print(f"{logdir} does not exist", file=sys.stderr)
        return 2
    if args.pick and not args.list_runs:
        picked = pick_runs(logdir, args.pick)
        sys.stdout.write("".join(f"{path}\0" for path in picked))
        return 0 if picked else 2
    status, lines = (
        (0, list_runs(logdir)) if args.list_runs else examine(args.dir, args.port or None, args.brief)
    )
    print("\n".join(lines), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
