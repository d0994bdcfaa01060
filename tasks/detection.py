"""Object detection: batches of (images [B, C, H, W], a list of B targets {"boxes": float [n, 4] xyxy
in pixels, "labels": int64 [n]}), n varying per image. The model computes its own losses in train mode
(torchvision's detectors do: it is given the targets) and returns one {"boxes", "scores", "labels"} per
image in eval mode. The loss is the model's dict of named losses (each a train/<name> curve); there is no
validation loss: mean average precision at IoU 0.5 (map50, monitored) and over IoU 0.5:0.95 (map, COCO's)
with torchmetrics' MeanAveragePrecision; true and predicted boxes drawn on the first validation images."""

from __future__ import annotations

import math

import torch

from tasks.base import Task, TaskError, collection, describe, require

GREEN, RED = (0, 200, 0), (230, 40, 40)


class Detection(Task):
    metrics = ("map50", "map")
    train_metrics = False  # in train mode the model returns its losses, not boxes

    def __init__(
        self,
        num_classes: int,
        monitor: str = "map50",
        mode: str = "max",
        classes: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        num_pictures: int = 4,
        picture_score: float = 0.5,
    ) -> None:
        """`classes`: a name per label, for the pictures; `mean` / `std`: the data's normalization, undone
        to show the images; `picture_score`: the pictures show predictions scored above this."""
        super().__init__(monitor, mode)
        require(num_classes >= 1, f"detection needs at least 1 class, got num_classes={num_classes}")
        require(
            classes is None or len(classes) == num_classes,
            f"detection got {len(classes or [])} class names for num_classes={num_classes}",
        )
        self.num_classes, self.classes = num_classes, list(classes or map(str, range(num_classes)))
        self.mean, self.std = mean, std
        self.num_pictures, self.picture_score = num_pictures, picture_score

    # --- the batch: (images, [targets]) ---------------------------------------------------------------
    def count(self, batch) -> int:
        return int(batch[0].shape[0])

    def forward(self, model, batch):
        images, targets = batch
        if not model.training:
            return model(images)
        return model(images, targets)  # every batch was checked on the CPU side of the loop (check_batch)

    def loss(self, output, batch) -> dict:
        if not isinstance(output, dict):
            raise TaskError(
                f"detection needs the model to return its dict of losses in train mode (given images and "
                f"targets), got {describe(output)}"
            )
        return output  # the model's own named losses: classification, box regression, ...

    # --- evaluation -----------------------------------------------------------------------------------
    def init_metrics(self, device: torch.device):
        from torchmetrics.detection import MeanAveragePrecision

        # COCO's evaluation (pycocotools): AP averaged over IoU 0.50:0.05:0.95, and at 0.5 alone. It keeps
        # every box of the split (lists of tensors, gathered over DDP ranks) and matches them once, at the end.
        return collection(device, ap=MeanAveragePrecision(box_format="xyxy", iou_type="bbox"))

    def update(self, metrics, output: list[dict], batch) -> None:
        metrics["ap"].update(output, batch[1])

    def compute(self, metrics) -> dict[str, float]:
        result = metrics["ap"].compute()
        return {"map50": float(result["map_50"]), "map": float(result["map"])}

    def log_pictures(self, writer, metrics, model, batch, step, prefix="val") -> None:
        from board.pictures import add_png

        # IMAGES: for the first images, one row each: the true boxes, and the predicted ones scored above
        # picture_score, with their class names (and scores).
        images, targets = batch[0][: self.num_pictures], batch[1][: self.num_pictures]
        predictions = model(images)
        add_png(writer, f"{prefix}/boxes_true_predicted", self.box_rows(images, targets, predictions), step)

    def box_rows(self, images, targets, predictions, min_size: int = 192) -> torch.Tensor:
        """uint8 [3, H, W]: one row an image, [true boxes | predicted boxes], 2 px apart; small images
        enlarged (nearest neighbour) so that the labels can be read."""
        from torchvision.utils import draw_bounding_boxes

        def draw(image, boxes, labels, colors):  # torchvision warns when given no box: none, no drawing
            return draw_bounding_boxes(image, boxes, labels, colors=colors) if len(boxes) else image

        x = images.detach().float().cpu()
        if self.mean is not None and self.std is not None:
            x = x * torch.tensor(self.std).view(1, -1, 1, 1) + torch.tensor(self.mean).view(1, -1, 1, 1)
        if x.shape[1] != 3:
            x = x[:, :1].expand(-1, 3, -1, -1)  # grey, or other band counts: the first channel, as grey
        n, _, h, w = x.shape
        scale = max(1, math.ceil(min_size / max(h, w)))
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        pad, (h, w) = 2, (h * scale, w * scale)
        canvas = torch.zeros(3, n * (h + pad) + pad, 2 * (w + pad) + pad, dtype=torch.uint8)
        for k in range(n):
            true, pred = targets[k], predictions[k]
            keep = pred["scores"] > self.picture_score
            names = [self.classes[c] for c in true["labels"].tolist()]
            labels, scores = pred["labels"][keep].tolist(), pred["scores"][keep].tolist()
            scored = [f"{self.classes[c]} {s:.2f}" for c, s in zip(labels, scores, strict=True)]
            panels = (
                draw(x[k], true["boxes"].cpu() * scale, names, colors=GREEN),
                draw(x[k], pred["boxes"][keep].cpu() * scale, scored, colors=RED),
            )
            top = pad + k * (h + pad)
            for j, panel in enumerate(panels):
                left = pad + j * (w + pad)
                canvas[:, top : top + h, left : left + w] = panel
        return canvas

    def predict(self, model, inputs, how) -> list[dict]:
        # In pixels of the image as the model saw it (resized to data.image_size), as the model ranks them.
        return [
            {
                "boxes": found["boxes"].tolist(),
                "labels": [self.classes[c] for c in found["labels"].tolist()],
                "scores": found["scores"].tolist(),
            }
            for found in model(inputs)
        ]

    # --- before training ------------------------------------------------------------------------------
    def check(self, output, batch) -> None:
        self.check_batch(batch, "the batch checked before training")  # once: on a GPU, one sync
        images = batch[0]
        require(
            isinstance(output, (list, tuple)) and len(output) == len(images),
            f"detection needs the model to return one dict of boxes, scores and labels per image in eval "
            f"mode (a list of {len(images)}), got {describe(output)}",
        )
        keys = {"boxes", "scores", "labels"}
        require(
            all(isinstance(o, dict) and keys <= set(o) for o in output),
            f"detection needs each of the model's eval outputs to be a dict with {sorted(keys)}, got "
            f"{describe(output[0]) if not isinstance(output[0], dict) else sorted(output[0])}",
        )

    def check_batch(self, batch, name: str = "the batch") -> None:
        """Every batch, before the model sees it: the structure (cheap checks of types and shapes) and the
        targets' values, which torchvision's detectors do not check or check with a traceback: each box
        finite with x2 > x1 and y2 > y1 (FCOS, like every torchvision detector, asserts a strictly positive
        width and height in train mode; an inf or NaN box would reach the loss, the mAP or the pictures),
        each label in 0..num_classes-1 (FCOS has no background class: -1 would index the last class, 99
        fail inside the loss). One TaskError naming the sample of the batch, the field and its value.
        Meant for CPU tensors: on a GPU, reading the values is a device sync."""
        shape = "(images [batch, channels, height, width], a list of {boxes, labels} per image)"
        require(
            isinstance(batch, (tuple, list)) and len(batch) == 2,
            f"detection needs batches of {shape}, got {describe(batch)}; samples of (image, target dict) "
            "are batched so by data.collate_fn (e.g. data.boxes.collate)",
        )
        images, targets = batch
        require(
            isinstance(images, torch.Tensor) and images.dim() == 4 and images.is_floating_point(),
            f"detection needs float images [batch, channels, height, width], got {describe(images)}",
        )
        require(
            isinstance(targets, (list, tuple)) and len(targets) == len(images),
            f"detection needs a list of {len(images)} targets, one per image (data.collate_fn keeps them "
            f"a list), got {describe(targets)}",
        )
        for target in targets:
            self.check_target(target)
        if not targets:
            return
        # The whole batch in a few vectorized operations (a batch's boxes are a few hundred numbers); the
        # culprit is looked for only when there is one.
        boxes = torch.cat([target["boxes"] for target in targets])
        labels = torch.cat([target["labels"] for target in targets])
        finite = boxes.isfinite().all(dim=1)
        sized = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        known = (labels >= 0) & (labels < self.num_classes)
        bad = ~(finite & sized & known)
        if not bad.any():
            return
        first = int(bad.nonzero()[0])
        counts = torch.tensor([len(target["labels"]) for target in targets])
        sample = int((counts.cumsum(0) <= first).sum())
        box = first - int(counts[:sample].sum())
        where = f"detection target: sample {sample} of {name}:"
        values = [round(v, 4) for v in boxes[first].tolist()]
        if not finite[first]:
            raise TaskError(
                f"{where} boxes[{box}] = {values} is not finite (boxes are x1, y1, x2, y2 in pixels)"
            )
        if not sized[first]:
            side = "x2 <= x1" if not boxes[first, 2] > boxes[first, 0] else "y2 <= y1"
            raise TaskError(
                f"{where} boxes[{box}] = {values} has {side} (boxes are x1, y1, x2, y2 in pixels, each with "
                "a positive width and height)"
            )
        raise TaskError(
            f"{where} labels[{box}] = {int(labels[first])} is outside 0..{self.num_classes - 1} "
            f"(data.num_classes={self.num_classes})"
        )

    def check_target(self, target) -> None:
        # Run on every batch: the messages are made only on failure (describe() on each target of every
        # batch cost more than the values' check).
        if not (isinstance(target, dict) and "boxes" in target and "labels" in target):
            raise TaskError(
                f"detection needs each target to be a dict with boxes and labels, got {describe(target)}"
            )
        boxes, labels = target["boxes"], target["labels"]
        if not (
            isinstance(boxes, torch.Tensor) and boxes.is_floating_point() and boxes.dim() == 2
            and boxes.shape[1] == 4
        ):  # fmt: skip
            raise TaskError(f"detection needs float boxes [n, 4] (x1, y1, x2, y2), got {describe(boxes)}")
        if not (
            isinstance(labels, torch.Tensor)
            and not labels.is_floating_point()
            and labels.shape == boxes.shape[:1]
        ):
            raise TaskError(
                f"detection needs integer labels [n], one per box, got {describe(labels)} for boxes "
                f"{describe(boxes)}"
            )
