"""The tagging worked example's own rules, which the part matrices do not see: padding counts for neither
the loss nor the metrics (a hand count), the collate cuts a batch to its longest sentence, the tagger gives
a sentence the same logits whatever padding its batch adds (predict.py tags each sentence alone), and the
tags need context (a per-character lookup falls short). A fork that deletes the parts skips these."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

tagging = pytest.importorskip("tasks.tagging")
entities = pytest.importorskip("data.entities")
tagger = pytest.importorskip("models.tagger")

PAD = tagging.PAD_TAG


def logits_for(pred: torch.Tensor, num_tags: int) -> torch.Tensor:
    """Model-like output [B, T, K] whose argmax is `pred` (padding positions: any tag)."""
    return F.one_hot(pred.clamp(min=0), num_tags).float() * 5


def test_accuracy_f1_and_loss_leave_the_padding_out():
    true = torch.tensor([[0, 1, 1, PAD, PAD], [2, 0, PAD, PAD, PAD]])
    # Predictions on the padding are wrong on purpose (tag 2): they must change nothing.
    pred = torch.tensor([[0, 1, 0, 2, 2], [2, 2, 2, 2, 2]])
    # Real tokens: (0,0) (1,1) (1,0) (2,2) (0,2): 3 of 5 right. Tag 0: hit 1, true 2, predicted 2 -> 1/2;
    # tag 1: hit 1, true 2, predicted 1 -> 2/3; tag 2: hit 1, true 1, predicted 2 -> 2/3. Tag 3: nowhere.
    task = tagging.Tagging(num_tags=4)
    output = logits_for(pred, 4)
    metrics = task.init_metrics(torch.device("cpu"))
    task.update(metrics, output, (None, true))
    numbers = task.compute(metrics)
    assert numbers["acc"] == pytest.approx(3 / 5)
    assert numbers["f1"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    real = true != PAD
    expected = F.cross_entropy(output[real], true[real])
    assert numbers["loss"] == pytest.approx(float(expected), rel=1e-6)
    assert float(task.loss(output, (None, true))) == pytest.approx(float(expected), rel=1e-6)


def test_the_collate_cuts_a_batch_to_its_longest_sentence():
    splits = entities.entities(40, 30, 0.25, 0.25, seed=0, split_seed=0)
    samples = [splits.train[i] for i in range(8)]
    tokens, tags = entities.collate(samples)
    lengths = [int((s[1] != PAD).sum()) for s in samples]
    assert tokens.shape == tags.shape == (8, max(lengths))
    for row, length in enumerate(lengths):
        assert (tags[row, :length] != PAD).all() and (tags[row, length:] == PAD).all()
        assert (tokens[row, :length] != entities.PAD_TOKEN).all() and (tokens[row, length:] == 0).all()


def test_a_sentence_s_logits_do_not_depend_on_its_batch_s_padding():
    torch.manual_seed(0)
    model = tagger.Tagger(vocab_size=128, num_tags=5).eval()
    sentence = torch.tensor(list(b"Abc 12 de3"))
    padded = torch.zeros(2, 24, dtype=torch.long)
    padded[0, : len(sentence)] = sentence
    padded[1] = torch.tensor(list(b"x" * 24))
    with torch.no_grad():
        alone, in_batch = model(sentence.unsqueeze(0))[0], model(padded)[0, : len(sentence)]
    torch.testing.assert_close(alone, in_batch, rtol=1e-5, atol=1e-5)


def test_the_tags_need_context():
    splits = entities.entities(300, 48, 0.15, 0.15, seed=0, split_seed=0)
    accuracy = entities.lookup_accuracy(splits.train, splits.test)
    assert 0.5 < accuracy < 0.9 and not math.isnan(accuracy)


def test_a_negative_number_of_blocks_is_refused():
    from models.tagger import Tagger

    with pytest.raises(ValueError, match="blocks=-1 must be at least 0"):
        Tagger(vocab_size=128, num_tags=5, blocks=-1)
