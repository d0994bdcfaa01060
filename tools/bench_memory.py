"""Per-rank memory of DDP against FSDP: the bytes of parameters, gradients and optimizer state each rank
holds after one AdamW step of the GPT config (conf/experiment/pytext_gpt.yaml), at 1, 2 and 4 CPU ranks.

    python tools/bench_memory.py                  # runs torchrun at each count; the table to docs/scaling.md
    python tools/bench_memory.py --ranks 2 --no-write
    torchrun --nproc_per_node 2 tools/bench_memory.py --measure    # one count: a JSON line from rank 0

Counted from the tensors each rank keeps (a DTensor's local shard), not from the allocator: the same on
any machine, and what decides whether a model fits. What FSDP adds in flight (one block's weights gathered
during its forward and backward, and the activations) is not in these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "scaling.md"
BEGIN, END = "<!-- bench_memory: begin -->", "<!-- bench_memory: end -->"
KINDS = ("params", "grads", "optimizer")


def _bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def gpt(overrides: list[str]):
    """The GPT as the experiment config builds it (setup/parts.py), from conf/ on disk."""
    from hydra import compose, initialize_config_dir

    from setup.parts import build

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=pytext_gpt", *overrides])
    return build("model", cfg.model), cfg


def measure_one(strategy: str, overrides: list[str]) -> dict[str, int]:
    """One AdamW step of the GPT under `strategy` at this world size; this rank's bytes of each kind."""
    import torch

    import setup.distributed as distributed
    from setup.sharding import prepare

    ddp = distributed.init_distributed("cpu")
    torch.manual_seed(0)
    model, cfg = gpt(overrides)
    model = prepare(model, strategy, False, False, "32", ddp)
    trained = distributed.wrap_ddp(model, ddp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, cfg.data.block_size))
    trained(tokens).float().mean().backward()
    optimizer.step()
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    params = list(model.parameters())
    mine = {"params": _bytes(params), "grads": _bytes(p.grad for p in params if p.grad is not None),
            "optimizer": _bytes(state)}  # fmt: skip
    # The largest rank's: what must fit on each device.
    return {k: distributed.max_over_ranks(v, ddp.device) for k, v in mine.items()}


def measure(overrides: list[str]) -> None:
    """Under torchrun: both strategies in the same process group; rank 0 prints one JSON line."""
    import setup.distributed as distributed

    found = {s: measure_one(s, overrides) for s in ("ddp", "fsdp")}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"ranks": int(os.environ.get("WORLD_SIZE", "1")), **found}), flush=True)
    distributed.cleanup_distributed()


def run(ranks: int, overrides: list[str]) -> dict:
    """This file under torchrun at `ranks` CPU processes; its JSON line."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           str(Path(__file__)), "--measure", *overrides]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(f"torchrun at {ranks} ranks failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))


def table(results: list[dict]) -> str:
    mib = 2**20
    lines = ["| ranks | strategy | parameters | gradients | AdamW state | total per rank | of DDP's |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        ddp_total = sum(r["ddp"][k] for k in KINDS)
        for strategy in ("ddp", "fsdp"):
            b = r[strategy]
            total = sum(b[k] for k in KINDS)
            cells = " | ".join(f"{b[k] / mib:.2f} MiB" for k in KINDS)
            lines.append(
                f"| {r['ranks']} | {strategy} | {cells} | {total / mib:.2f} MiB | {total / ddp_total:.2f} |"
            )
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="one count, under torchrun: print JSON")
    parser.add_argument("--ranks", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--no-write", action="store_true", help=f"print the table, leave {DOC.name} as it is")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON, not the table")
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, str(REPO))
    if args.measure:
        return measure(overrides)
    results = [run(n, overrides) for n in args.ranks]
    text = table(results)
    print(json.dumps(results) if args.json else text)
    if not args.no_write:
        write_doc(text)


if __name__ == "__main__":
    main()
