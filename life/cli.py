"""The command line of train.py and eval.py: however a run ends before it starts, one line.

Hydra reports a bad command line (an unknown option, a key that does not exist, bad override syntax) in
five to ten lines of its own; a signal during start-up would print a traceback. Here both become one line
and exit 2 (or 128 + the signal's number). HYDRA_FULL_ERROR=1, set by the user, still shows everything.
No torch here: `train.py --help` imports this module.
"""

from __future__ import annotations

import os
import signal
import sys
from functools import partial
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from setup.conflicts import conflict_line
from system.errors import USER, did_you_mean, ending, signal_exit

CONF = Path(__file__).resolve().parents[1] / "conf"
# Hydra's options that answer without running the task (help, the composed config, tab completion).
QUICK_OPTIONS = (
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
)


def answers_at_once(argv: list[str]) -> bool:
    """Whether this command line only asks Hydra a question (`--help`, `--cfg job`, tab completion): the
    entry point then answers it before importing torch."""
    return any(arg.split("=", 1)[0] in QUICK_OPTIONS for arg in argv[1:])


def run(main, prog: str, config_name: str) -> None:
    """Call a @hydra.main function; Hydra's errors come back as exceptions (HYDRA_FULL_ERROR) to be told here."""
    from system.errors import Interrupted
    from system.signals import dropped, raise_on_signals

    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        # From here on a signal raises Interrupted, which becomes one line: inside the try, so that one landing
        # right after the handler is installed is caught too (the load test found it in the line after).
        raise_on_signals()
        if conflict := conflict_line(CONF):  # a merge left in conf/: one line, not YAML's traceback
            print(f"{prog}: error: {conflict}", file=sys.stderr)
            sys.exit(USER)
        main()
    except (Exception, Interrupted) as err:  # Interrupted: a signal during Hydra's own start-up
        end = ending(err, partial(hydra_error_line, conf_dir=CONF, config_name=config_name))
        if end.stopped:
            from store.rundir import discard_run_dir

            discard_run_dir(end.stopped.run_dir)  # Hydra may have made the run's directory: it leaves none
            life = sys.modules.get("life.run")
            when = "after its run ended: nothing was lost" if life and life.RunLife.ended else (
                "before it started: nothing to save")  # fmt: skip
            print(f"{prog}: {end.line} {when}.", file=sys.stderr)
        elif end.line is None:
            raise
        else:
            print(f"{prog}: error: {end.line}", file=sys.stderr)
        sys.exit(end.code)
    # A library swallowed the signal's Interrupted (system/signals.py): the run was still stopped.
    if signum := dropped():
        name = signal.Signals(signum).name
        print(f"{prog}: stopped by {name} as it ended: it had finished by then.", file=sys.stderr)
        sys.exit(signal_exit(signum))


def hydra_error_line(err: Exception, conf_dir, config_name: str) -> str | None:
    """Hydra's report of a bad command line, in one line (None for anything that is not one): an unknown
    option with the available ones, a key that does not exist with the nearest one, bad override syntax."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException

    if not isinstance(err, HydraException):
        return None
    text = " ".join(str(err).split())
    if isinstance(err, MissingConfigException):
        options = getattr(err, "options", None) or []
        head, _, rest = text.partition(" Available options in ")
        group = rest.split(":", 1)[0] if rest else "it"
        return head + (f". Available options in {group}: {', '.join(options)}" if options else "")
    if isinstance(err, OverrideParseException):
        return text
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    if key and "not in struct" in str(cause):
        return f"{key} is not a config key{did_you_mean(key, _known_keys(conf_dir, config_name))}; a new key needs +{key}=..."
    return text


def _known_keys(conf_dir, config_name: str) -> list[str]:
    """Every key of the default composed config (for the nearest-key hint of an error)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name)
    except Exception:
        return []

    def walk(node, prefix=""):
        for k in node:
            full = f"{prefix}{k}"
            yield full
            # Not read where it is `???` (eval.py's ckpt) or an interpolation: either would raise or resolve.
            if OmegaConf.is_missing(node, k) or OmegaConf.is_interpolation(node, k):
                continue
            if isinstance(node[k], DictConfig):
                yield from walk(node[k], full + ".")

    return list(walk(cfg))
