"""The non-finite check of every step, on the device (no host synchronisation between logging steps).

Each step's reduced loss and gradient norm are checked where they are; the first non-finite step is
recorded there (its step, loss and norm), and from it on every update is skipped the way AMP skips
a step with inf gradients: the fused AdamW takes the flag as its `found_inf` and leaves weights,
moments and step counts as they were. The host reads the record only where it reads anyway (logging
steps, before a checkpoint, before the export): then the run stops with exit 1, its last good
checkpoint kept and nothing non-finite saved. An optimizer that is not fused (`--set optimizer.fused=false`)
cannot skip on the device: the check then reads the host at every step, before the update.
"""

from __future__ import annotations

from typing import Callable

import torch

from adaptkit.errors import AdaptkitError


class Divergence:
    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, kept: Callable[[], str]):
        self.optimizer, self.kept = optimizer, kept
        self.fused = all(group.get("fused") for group in optimizer.param_groups)
        self.record = torch.zeros(4, dtype=torch.float32, device=device)  # [diverged, step, loss, grad norm]

    def update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Record `step` if it is the first non-finite one; skip this and every later update after it."""
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        values = torch.stack([torch.ones_like(self.record[0]), torch.full_like(self.record[0], step),
                              loss.detach().float().reshape(()), grad_norm.detach().float().reshape(())])
        self.record = torch.where(bad & (self.record[0] == 0), values, self.record)
        if self.fused:
            self.optimizer.found_inf = self.record[0]  # read by the fused AdamW kernel: no update when 1
        else:
            self.check()

    def check(self) -> None:
        """The host read: a recorded divergence stops the run (exit 1)."""
        diverged, step, loss, grad_norm = self.record.tolist()
        if diverged:
            raise AdaptkitError(f"training diverged at step {int(step)}: loss {loss:.4g}, gradient norm {grad_norm:.4g}; "
                                f"stopped before that update, final/ not written; {self.kept()}; "
                                "lower --lr or clip gradients (--max-grad-norm)")
