"""A NaN or infinite loss: stop with an error that names the step and the last good checkpoint (default), or
skip the batch and count it (`trainer.skip_nonfinite=true`).

The default costs no sync: the first bad step is noted on the device and read only where the loop syncs
anyway (the logging interval) and before every checkpoint, so that no checkpoint ever holds the weights
that a non-finite loss has spoiled. Skipping must decide before the backward pass, so it syncs per batch.
"""

from __future__ import annotations

import torch


class NonFiniteLossError(Exception):
    """Training produced a non-finite loss; the message names the step and the last good checkpoint."""


class NonFiniteGuard:
    def __init__(self, skip: bool, device: torch.device, skipped: int = 0) -> None:
        self.skip = skip
        self.skipped = skipped  # batches skipped so far, this run and the runs it resumes
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def drop(self, loss: torch.Tensor, step: int) -> bool:
        """Whether to drop this batch; `step` is the optimizer step that the batch belongs to."""
        if self.skip:
            if bool(torch.isfinite(loss)):  # the one sync per batch that this option costs
                return False
            self.skipped += 1
            return True
        bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, step, self._first_bad)
        return False

    def check(self, last_good, writer=None) -> None:
        """Raise NonFiniteLossError if any loss so far was non-finite (a sync: call it where the loop syncs).
        The TensorBoard writer is closed first, so that the curves up to the failure are on disk."""
        bad = int(self._first_bad)
        if bad < 0:
            return
        if writer is not None:
            writer.close()
        good = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"non-finite loss at step {bad}; training stopped, {good}. Lower optimizer.lr, set "
            "trainer.grad_clip, or skip such batches with trainer.skip_nonfinite=true."
        )
