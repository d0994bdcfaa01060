"""The training losses between two log lines, and what happens when one of them is NaN or infinite.

The losses stay on the device, each batch's detached loss kept in a list (no copy, no kernel, no sync per
step) and stacked when they are read; no per-step check is needed. They are read where the loop syncs
anyway (every logging.every_n_steps steps) and before every checkpoint; a non-finite one is then traced to
its exact step, and training stops with an error that names that step and the last good checkpoint, so
that no checkpoint ever holds weights that a non-finite loss has spoiled.

`trainer.skip_nonfinite=true` instead drops such batches and counts them. That must be decided before the
backward pass, so it costs one sync per batch (under DDP, the ranks agree on it).
"""

from __future__ import annotations

import math

import torch

from setup.distributed import all_reduce_sum, is_distributed
from system.errors import UserError


class NonFiniteLossError(UserError):
    """Training produced a non-finite loss; the message names the step and the last good checkpoint."""


def total_loss(loss) -> tuple[torch.Tensor, dict | None]:
    """A task's loss is a scalar tensor, or a dict of named scalar tensors: their sum is what is
    backpropagated, and each part is logged on its own. Returns (the total, the parts or None)."""
    if isinstance(loss, torch.Tensor):
        return loss, None
    return sum(loss.values()), loss


class LossWindow:
    """The losses of one logging window: each step's total, and its named parts when the task's loss is a
    dict of them (detection's loss_classifier, loss_box_reg, ...), each logged as its own train scalar."""

    def __init__(self, capacity: int, device: torch.device, state: dict | None = None) -> None:
        # `capacity` (the batches of one logging window) is a hint: the list grows as needed.
        self.device = device
        self.losses: list[torch.Tensor] = []  # 0-d, detached: the loss tensors themselves, not copies
        self.steps: list[int] = []  # the optimizer step each loss belongs to
        self.named: dict[str, list[torch.Tensor]] = {}
        self.load_state_dict(state)

    def load_state_dict(self, state: dict | None) -> None:
        """A resumed run goes on with the window it was interrupted in (None: an empty one)."""
        self.reset()
        if state:
            for loss, step in zip(state["losses"], state["steps"], strict=True):
                self.add(loss.to(self.device), int(step))
            self.named = {k: list(v.to(self.device)) for k, v in (state.get("named") or {}).items()}

    def add(self, loss: torch.Tensor, step: int, named: dict | None = None) -> None:
        # An append, not a write into a buffer: a buffer write is an indexing op (a kernel launch on a GPU)
        # every step, which costs as much as the rest of the loop's bookkeeping together.
        self.losses.append(loss.detach())
        self.steps.append(step)
        if named:
            for name, part in named.items():
                self.named.setdefault(name, []).append(part.detach())

    def _stacked(self) -> torch.Tensor:
        if not self.losses:
            return torch.zeros(0, device=self.device)
        return torch.stack(self.losses).float()

    def __len__(self) -> int:
        return len(self.steps)

    def read(self, last_good, writer=None) -> dict[str, float]:
        """The mean loss, and of each named part, over all ranks' windows (a sync; under DDP every rank must
        call it at the same step). Raises NonFiniteLossError, on every rank alike, if any loss was
        non-finite."""
        names = sorted(self.named)
        sums = torch.stack(
            [self._stacked().sum(), *(torch.stack(self.named[n]).float().sum() for n in names)]
        )
        count = torch.tensor([float(len(self.steps))], device=self.device)
        if is_distributed():
            sums, count = all_reduce_sum(sums, count)
        values = torch.cat([sums, count.to(sums)]).tolist()  # the one read: non-finite shows on the host
        if not math.isfinite(values[0]):
            self._raise(last_good, writer)
        n = max(values[-1], 1)
        return {"loss": values[0] / n, **{name: v / n for name, v in zip(names, values[1:-1], strict=True)}}

    def check(self, last_good, writer=None) -> None:
        """This rank's losses only (a sync, no collective): before a checkpoint is written."""
        if self.steps and not bool(torch.isfinite(self._stacked()).all()):
            self._raise(last_good, writer)

    def reset(self) -> None:
        self.losses, self.steps, self.named = [], [], {}

    def state_dict(self) -> dict:
        named = {k: torch.stack(v).cpu() for k, v in self.named.items()}
        return {"losses": self._stacked().cpu(), "steps": list(self.steps), "named": named}

    def _raise(self, last_good, writer) -> None:
        finite = torch.isfinite(self._stacked()).tolist()
        where = (
            f"step {self.steps[finite.index(False)]}"
            if False in finite
            else f"steps {self.steps[0]}-{self.steps[-1]} (on another rank)"
        )
        if writer is not None:
            writer.flush()  # the curves up to the failure on disk (RunLife closes the writer)
        good = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"non-finite loss at {where}; training stopped, {good}. Lower optimizer.lr, set "
            "trainer.grad_clip, or skip such batches with trainer.skip_nonfinite=true."
        )


def drop_nonfinite(loss: torch.Tensor) -> bool:
    """For trainer.skip_nonfinite: whether this batch's loss (on any rank) is non-finite. One sync."""
    (bad,) = all_reduce_sum((~torch.isfinite(loss.detach())).to(torch.float32))
    return bool(bad > 0)
