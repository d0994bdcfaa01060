"""Progress: a tqdm bar on a terminal, plain log lines everywhere else (files, CI, nohup, SLURM)."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("train")


class Progress:
    def __init__(self, enabled: bool, total_steps: int) -> None:
        self.total_steps = total_steps
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)

    def advance(self, steps: int = 1) -> None:
        """Called every optimizer step: only a counter, nothing that syncs with the device."""
        if self.bar is not None:
            self.bar.update(steps)

    def report(self, step: int, epoch: int, values: dict) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch={epoch} {text}", refresh=False)
        else:
            log.info("step %d/%d epoch %d %s", step, self.total_steps, epoch, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
