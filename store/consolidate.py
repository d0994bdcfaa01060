"""A sharded checkpoint as one file, on one process (no process group, no GPU):

    python -m store.consolidate outputs/2026-12-07/14-03-11_gpt_pytext          # best.dcp (else last.dcp)
    python -m store.consolidate <run>/checkpoints/last.dcp model.pt             # that one, to model.pt

writes a checkpoint file of store/checkpoint.py's format with the whole weights, for a machine or a tool
that reads single files (eval.py, load_trained and init_from= read the sharded directory themselves). The
optimizer's state is left out (it is kept per parameter name in the shards, by position in a file): resume
from the .dcp directory. Default output: <name>.pt beside the directory (best.dcp -> best.consolidated.pt).
"""

from __future__ import annotations

import sys
from pathlib import Path

from store.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from system.errors import USER, one_line
from system.layout import checkpoint_to_evaluate


def consolidate(path, out=None) -> Path:
    """Write the sharded checkpoint that `path` names (a .dcp directory, or a run directory's) as one file;
    returns where. Raises CheckpointError, one line."""
    found = checkpoint_to_evaluate(path)
    if found is None or not found.is_dir():
        raise CheckpointError(f"{path} is not a sharded checkpoint (a .dcp directory) nor a run holding one")
    ckpt = read_checkpoint(found)
    out = Path(out) if out else found.with_name(f"{found.stem}.consolidated.pt")
    save_checkpoint({**ckpt._saved, "model": ckpt.model_weights}, out)
    return out


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2 or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else USER
    try:
        out = consolidate(*argv)
    except CheckpointError as err:
        print(f"store.consolidate: error: {one_line(err)}", file=sys.stderr)
        return USER
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
