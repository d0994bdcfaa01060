"""Regression: mean squared error on real targets, RMSE, MAE and R^2 in the target's own units, a
predicted-vs-true scatter picture, and a closed-form least-squares fit as the reference to beat."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tasks.base import Task, describe, output_tensor, require


class Regression(Task):
    metrics = ("loss", "rmse", "mae", "r2")

    def __init__(
        self,
        num_targets: int = 1,
        monitor: str = "rmse",
        mode: str = "min",
        target_mean: float | list[float] = 0.0,
        target_std: float | list[float] = 1.0,
    ) -> None:
        """`target_mean` / `target_std`: the affine map the data applied to its targets (y - mean) / std.
        The loss is trained on the mapped targets; rmse, mae and the picture are mapped back to the
        original units (r2 is the same in both)."""
        super().__init__(monitor, mode)
        require(num_targets >= 1, f"regression needs at least 1 target, got num_targets={num_targets}")
        self.num_targets = num_targets
        self.target_mean = torch.as_tensor(target_mean, dtype=torch.float64).expand(num_targets).clone()
        self.target_std = torch.as_tensor(target_std, dtype=torch.float64).expand(num_targets).clone()

    def loss(self, output, batch):
        return F.mse_loss(output, self.targets(batch))

    def init_metrics(self, device):
        # float64 where the device has it: R^2 takes sum(y^2) - sum(y)^2 / n, which cancels badly in float32.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        per_target = {
            name: torch.zeros(self.num_targets, device=device, dtype=dtype)
            for name in ("squared_error", "abs_error", "target", "target_squared")
        }
        return {**per_target, "count": torch.zeros((), device=device, dtype=torch.long)}

    def update(self, sums, output, batch):
        y = self.targets(batch).to(sums["target"].dtype)
        error = output.to(y.dtype) - y
        sums["squared_error"] += error.square().sum(dim=0)
        sums["abs_error"] += error.abs().sum(dim=0)
        sums["target"] += y.sum(dim=0)
        sums["target_squared"] += y.square().sum(dim=0)
        sums["count"] += y.shape[0]

    def compute(self, sums):
        n = max(int(sums["count"]), 1)
        sse, sae = sums["squared_error"].double().cpu(), sums["abs_error"].double().cpu()
        sst = sums["target_squared"].double().cpu() - sums["target"].double().cpu().square() / n
        std = self.target_std
        r2 = (1 - sse / sst).where(sst > 0, torch.tensor(math.nan))  # one target, constant in the split: NaN
        return {
            "loss": (sse.sum() / (n * self.num_targets)).item(),  # MSE of the mapped targets: the train loss
            "rmse": (std.square() * sse / n).mean().sqrt().item(),
            "mae": (std * sae / n).mean().item(),
            "r2": r2.mean().item(),
        }

    def log_pictures(self, writer, sums, model, batch, step, prefix="val"):
        from board.pictures import add_png

        # IMAGES: predicted (up) against true (across) for the first batch, in the target's units.
        output = self.forward(model, batch).detach().double().cpu()
        mean, std = self.target_mean, self.target_std
        true = self.targets(batch).detach().double().cpu() * std + mean
        add_png(writer, f"{prefix}/predicted_vs_true", scatter_image(true, output * std + mean), step)

    def reference(self, splits):
        """The test R^2 of ordinary least squares with an intercept, fitted on the train split: what a
        linear model reaches on this very split (R^2 of diabetes swings from 0.23 to 0.62 across splits)."""
        x_train, y_train = _arrays(splits.train)
        x_test, y_test = _arrays(splits.test)

        def design(x):
            return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)

        weights = torch.linalg.lstsq(design(x_train), y_train, driver="gelsd").solution
        return {"test_r2_least_squares": r2_score(design(x_test) @ weights, y_test)}

    def predict(self, model, inputs, how):
        # In the target's own units: the data's map (y - mean) / std undone.
        values = output_tensor(model(inputs)).double().cpu() * self.target_std + self.target_mean
        columns = (
            ["prediction"] if self.num_targets == 1 else [f"prediction_{i}" for i in range(self.num_targets)]
        )
        return [dict(zip(columns, row, strict=True)) for row in values.tolist()]

    def check(self, output, batch):
        y = self.targets(batch)
        require(
            y.is_floating_point(),
            f"regression needs float targets of shape [batch, num_targets], got {describe(y)}",
        )
        require(
            y.dim() == 2 and y.shape[1] == self.num_targets,
            f"regression needs targets of shape [batch, num_targets={self.num_targets}], got {describe(y)}",
        )
        require(
            output.shape == y.shape,
            f"regression needs model outputs shaped like the targets {list(y.shape)}, "
            f"got {list(output.shape)}",
        )

    def check_targets(self, targets):
        require(targets.is_floating_point(), f"regression needs float targets, got {describe(targets)}")
        require(
            bool(torch.isfinite(targets).all()),
            f"regression targets {describe(targets)} hold NaN or infinite values",
        )


def r2_score(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Coefficient of determination, averaged over targets (scikit-learn's uniform average)."""
    sse = (true - pred).square().sum(dim=0)
    sst = (true - true.mean(dim=0)).square().sum(dim=0)
    return (1 - sse / sst).mean().item()


def scatter_image(true: torch.Tensor, pred: torch.Tensor, size: int = 256, margin: int = 8) -> torch.Tensor:
    """uint8 [3, size, size]: one orange dot per (true, predicted) pair, true across and predicted up,
    on one shared scale with the grey diagonal where predicted equals true. Every target is drawn."""
    true, pred = true.flatten().double(), pred.flatten().double()
    both = torch.cat([true, pred])
    low, high = both.min().item(), both.max().item()
    high = high if high > low else low + 1.0
    span = size - 2 * margin - 1

    def pixel(v):
        return ((v - low) / (high - low) * span).round().long() + margin

    image = torch.full((3, size, size), 24, dtype=torch.uint8)
    diagonal = torch.arange(margin, size - margin)
    image[:, size - 1 - diagonal, diagonal] = 96
    cols, rows = pixel(true), size - 1 - pixel(pred)
    for dy in (-1, 0, 1):  # 3x3 dots
        for dx in (-1, 0, 1):
            image[:, rows + dy, cols + dx] = torch.tensor([255, 160, 40], dtype=torch.uint8).view(3, 1)
    return image


def _arrays(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, F], targets [N, K]) as float64, from a TensorDataset or any (x, y) dataset."""
    if hasattr(dataset, "tensors"):
        x, y = dataset.tensors[:2]
    else:
        samples = [dataset[i] for i in range(len(dataset))]
        x = torch.stack([torch.as_tensor(s[0]) for s in samples])
        y = torch.stack([torch.as_tensor(s[1]) for s in samples])
    return x.flatten(1).double(), y.reshape(len(y), -1).double()
