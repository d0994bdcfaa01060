"""The reference for the end-to-end benchmark: a training script as one would write it by hand, no Hydra, no
TensorBoard. It does the work of `python train.py` for one of the shipped tasks: the same data, model,
optimizer, schedule and epochs (read from a JSON spec that tools/bench_e2e.py writes from the composed
config), validation at every epoch, the best weights saved (model and optimizer, as nanoGPT saves them),
the final test on those weights, a metrics.json. The loss and the metric are written out here.

    python tools/handwritten_train.py SPEC.json RUN_DIR

It prints one JSON line of where its time went, for the benchmark's breakdown.
"""

import importlib
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's data/ and models/

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def make(node: dict, *args, **kwargs):
    """Call a `_target_` with the node's other keys (what a hand-written script would type out)."""
    module, _, name = node["_target_"].rpartition(".")
    params = {k: v for k, v in node.items() if not k.startswith("_")}
    return getattr(importlib.import_module(module), name)(*args, **params, **kwargs)


# The tasks whose loss and metrics are written out below; a fork's own task is not (cannot_write).
KINDS = ("classification", "regression", "segmentation", "language_modeling")


def cannot_write(spec: dict) -> str | None:
    """Why this script cannot do the run of `spec` (None: it can): a task not written out here, or data that
    is not in-memory tensors (it gathers batches from `dataset.tensors`). The benchmark leaves such a run
    out with this reason, as a project whose default run is a fork's own task."""
    if spec["kind"] not in KINDS:
        return f"its task ({spec['kind']}) is none of those written out by hand ({', '.join(KINDS)})"
    splits = make(spec["dataset"])
    if not hasattr(splits.train, "tensors"):
        return f"its data ({spec['dataset']['_target_']}) is not in-memory tensors"
    return None


def batches(dataset, batch_size: int, shuffle: bool, generator=None):
    """Whole batches gathered by index from the in-memory tensors; the train split drops its ragged end."""
    tensors, n = dataset.tensors, len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if shuffle and n > batch_size else n
    for b in range(0, stop, batch_size):
        idx = order[b : b + batch_size]
        yield tuple(t[idx] for t in tensors)


def loss_and_output(kind: str, model, batch):
    if kind == "language_modeling":
        x, y = batch[0][:, :-1], batch[0][:, 1:]
        logits = model(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)), logits, y
    x, y = batch
    out = model(x)
    if kind == "regression":
        return F.mse_loss(out, y), out, y
    return F.cross_entropy(out, y), out, y  # classification, and segmentation (per pixel)


@torch.no_grad()
def evaluate(kind: str, model, dataset, batch_size: int, num_classes: int) -> dict:
    model.eval()
    loss_sum, count, correct = 0.0, 0, 0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long) if kind == "segmentation" else None
    for batch in batches(dataset, batch_size, shuffle=False):
        loss, out, y = loss_and_output(kind, model, batch)
        n = y.numel() if kind in ("segmentation", "language_modeling") else y.shape[0]
        loss_sum, count = loss_sum + loss.item() * n, count + n
        if kind == "classification":
            correct += (out.argmax(1) == y).sum().item()
        if confusion is not None:
            confusion += torch.bincount((y * num_classes + out.argmax(1)).flatten(), minlength=num_classes**2)
    model.train()
    metrics = {"loss": loss_sum / count}
    if kind == "classification":
        metrics["acc"] = correct / count
    if confusion is not None:
        c = confusion.view(num_classes, num_classes).double()
        iou = c.diag() / (c.sum(0) + c.sum(1) - c.diag()).clamp(min=1)
        metrics["miou"] = iou.mean().item()
    return metrics


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    run_dir = Path(sys.argv[2])
    run_dir.mkdir(parents=True, exist_ok=True)
    kind, times = spec["kind"], {"steps": 0.0, "validation": 0.0, "checkpoints": 0.0, "test": 0.0}
    torch.manual_seed(spec["seed"])
    splits = make(spec["dataset"])
    model = make(spec["model"])
    optimizer = make(spec["optimizer"], model.parameters())
    batch_size = spec["batch_size"]
    steps_per_epoch = len(splits.train) // batch_size if len(splits.train) > batch_size else 1
    total = spec["max_steps"] or spec["max_epochs"] * steps_per_epoch
    scheduler = make(spec["scheduler"], optimizer, total_steps=total)
    monitor, higher = {
        "classification": ("acc", True),
        "segmentation": ("miou", True),
    }.get(kind, ("loss", False))
    best, step, first_step = None, 0, None
    model.train()
    for epoch in range(math.ceil(total / steps_per_epoch)):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(spec["seed"] * 1000 + epoch)
        for batch in batches(splits.train, batch_size, shuffle=True, generator=generator):
            if first_step is None:
                first_step = time.time()
            loss, _, _ = loss_and_output(kind, model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step % spec["log_every"] == 0:
                print(f"step {step} loss {loss.item():.4f}", flush=True)
            if step >= total:
                break
        now = time.perf_counter()
        times["steps"] += now - start
        val = evaluate(kind, model, splits.val, batch_size, spec["num_classes"])
        value = val[monitor]
        print(f"epoch {epoch} val {monitor} {value:.4f}", flush=True)
        after_val = time.perf_counter()
        times["validation"] += after_val - now
        if best is None or (value > best if higher else value < best):
            best = value
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            torch.save(state, run_dir / "best.pt")
        times["checkpoints"] += time.perf_counter() - after_val
        if step >= total:
            break
    start = time.perf_counter()
    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True)["model"])
    test = evaluate(kind, model, splits.test, batch_size, spec["num_classes"])
    (run_dir / "metrics.json").write_text(json.dumps({"test": test, "best": best}) + "\n")
    times["test"] = time.perf_counter() - start
    times["first_step_at"] = first_step
    print("TIMES " + json.dumps(times), flush=True)


if __name__ == "__main__":
    main()
