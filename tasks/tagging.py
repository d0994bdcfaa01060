"""Token tagging: one tag a token of sentences of different lengths. Batches are (tokens, tags), [B, T] each,
padded at the end: tokens with the model's pad id, tags with -100 (cross-entropy's ignore_index), which is
how this task tells padding from text. The loss is cross-entropy over the real tokens only; the metrics are
token accuracy and the macro F1 over the tags (the mean of each tag's F1, over the tags that occur in the
targets or the predictions), both from a tag confusion matrix summed on the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.base import Task, check_ids, describe, mean_metric, output_tensor, require

PAD_TAG = -100  # cross-entropy's ignore_index


class Tagging(Task):
    metrics = ("loss", "acc", "f1")

    def __init__(self, num_tags: int, monitor: str = "f1", mode: str = "max") -> None:
        super().__init__(monitor, mode)
        require(num_tags >= 2, f"tagging needs at least 2 tags, got num_tags={num_tags}")
        self.num_tags = num_tags

    def images(self, batch):
        return None

    def loss(self, output, batch):
        return F.cross_entropy(output.flatten(0, 1), self.targets(batch).flatten(), ignore_index=PAD_TAG)

    def init_metrics(self, device):
        return {
            # The loss a token, weighted by the padding mask: a split's mean over its real tokens.
            "loss": mean_metric().to(device),
            "confusion": torch.zeros(self.num_tags**2, device=device, dtype=torch.long),
        }

    def update(self, metrics, output, batch):
        tags = self.targets(batch).flatten()
        real = tags != PAD_TAG
        logits = output.flatten(0, 1).float()
        losses = F.cross_entropy(logits, tags, ignore_index=PAD_TAG, reduction="none")  # 0 on the padding
        metrics["loss"].update(losses, real)
        # Padding goes to cell 0 with weight 0: masked by value, not by indexing, which would sync to size it.
        cells = torch.where(real, tags * self.num_tags + logits.argmax(dim=1), 0)
        metrics["confusion"].scatter_add_(0, cells, real.long())

    def compute(self, metrics):
        confusion = metrics["confusion"].view(self.num_tags, self.num_tags).double().cpu()
        return {"loss": float(metrics["loss"].compute()), **scores(confusion)}

    def predict(self, model, inputs, how):
        # Each sentence alone: the model's tags do not depend on a batch's padding (models/tagger.py), and
        # sentences are short. Rows: the text and its tags, one name a character.
        names = how.class_names or [str(i) for i in range(self.num_tags)]
        rows = []
        for tokens in inputs:
            chosen = output_tensor(model(tokens.unsqueeze(0)))[0].argmax(dim=-1).tolist()
            rows.append(
                {"text": bytes(tokens.tolist()).decode(errors="replace"), "tags": [names[t] for t in chosen]}
            )
        return rows

    def check(self, output, batch):
        tags = self.targets(batch)
        require(
            isinstance(tags, torch.Tensor) and not tags.is_floating_point() and tags.dim() == 2,
            f"tagging needs batches (tokens, tags) with integer tags of shape [batch, tokens], got {describe(tags)}",
        )
        expected = [*tags.shape, self.num_tags]
        require(
            list(output.shape) == expected,
            f"tagging needs model outputs of shape [batch, tokens, num_tags={self.num_tags}] = {expected}, "
            f"got {list(output.shape)}",
        )

    def check_targets(self, targets):
        real = targets[targets != PAD_TAG] if not targets.is_floating_point() else targets
        not_integer = f"tagging needs integer tags, got {describe(targets)}"
        if real.numel():
            check_ids(real, self.num_tags, "tags", "data.num_tags", not_integer)


def scores(confusion: torch.Tensor) -> dict[str, float]:
    """Token accuracy and macro F1 from a [true, predicted] confusion matrix; a tag that occurs in neither
    the targets nor the predictions is left out of the mean (it has no F1)."""
    hits = confusion.diagonal()
    true, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
    seen = (true + predicted) > 0
    f1 = 2 * hits[seen] / (true + predicted)[seen]
    total = confusion.sum()
    return {
        "acc": float(hits.sum() / total) if total else 0.0,
        "f1": float(f1.mean()) if seen.any() else 0.0,
    }
