"""Language modeling: next-token cross-entropy on [B, T, V] logits, bits per character, and a text sample
from a fixed prompt at each validation. Batches are `(tokens,)` of [B, T + 1]: the model reads the first
T tokens, and each position predicts the token after it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tasks.base import Task, check_ids, describe, output_tensor, require


class LanguageModeling(Task):
    metrics = ("loss", "bpc")
    unit = "tokens"

    def __init__(
        self,
        vocab_size: int,
        monitor: str = "bpc",
        mode: str = "min",
        prompt: str = "def ",
        sample_tokens: int = 200,
        temperature: float = 0.8,
        sample_seed: int = 0,
    ) -> None:
        """Tokens are bytes (vocab_size 256) or characters: bpc = loss / ln 2 is then bits per byte or per
        character. The sample continues `prompt` (UTF-8 bytes as token ids) by `sample_tokens`, drawn at
        `temperature` (0: greedy) from a generator of its own seeded with `sample_seed`, so each validation
        shows the same draw and the training random state is untouched."""
        super().__init__(monitor, mode)
        require(
            vocab_size >= 2,
            f"language modeling needs a vocabulary of at least 2 tokens, got vocab_size={vocab_size}",
        )
        self.vocab_size, self.prompt, self.sample_tokens = vocab_size, prompt, sample_tokens
        self.temperature, self.sample_seed = temperature, sample_seed

    # --- the batch: (tokens,) of [B, T + 1] ---------------------------------------------------------------
    def inputs(self, batch):
        return batch[0][:, :-1]

    def targets(self, batch):
        return batch[0][:, 1:]

    def count(self, batch):
        tokens = batch[0]
        return int(tokens.shape[0] * (tokens.shape[1] - 1))

    def images(self, batch):
        return None

    # --- training and evaluation --------------------------------------------------------------------------
    def loss(self, output, batch):
        # [B * T, V] against [B * T]: one row of logits a token, never a V x V matrix.
        return F.cross_entropy(output.flatten(0, 1), self.targets(batch).flatten())

    def init_metrics(self, device):
        dtype = torch.float32 if device.type == "mps" else torch.float64
        return {
            "loss": torch.zeros((), device=device, dtype=dtype),
            "tokens": torch.zeros((), device=device, dtype=torch.long),
        }

    def update(self, sums, output, batch):
        y = self.targets(batch)
        sums["loss"] += F.cross_entropy(output.flatten(0, 1).float(), y.flatten(), reduction="sum")
        sums["tokens"] += y.numel()

    def compute(self, sums):
        loss = sums["loss"].item() / max(int(sums["tokens"]), 1)
        return {"loss": loss, "bpc": loss / math.log(2)}

    def log_pictures(self, writer, sums, model, batch, step, prefix="val"):
        # TEXT: the model's continuation of the fixed prompt, as a code block.
        context = self.inputs(batch).shape[1]
        text = self.sample(model, context, batch[0].device)
        writer.add_text(f"{prefix}/sample", "```\n" + text + "\n```", step)

    def sample(self, model, context: int, device: torch.device) -> str:
        """The prompt and its continuation, decoded as UTF-8 (bad bytes replaced). Call under no_grad."""
        tokens = torch.tensor(list(self.prompt.encode()), dtype=torch.long, device=device)
        new = generate(model, tokens, self.sample_tokens, context, self.temperature, self.sample_seed)
        return decode(torch.cat([tokens.cpu(), new]))

    def predict(self, model, inputs, how):
        # Each prompt drawn from a generator of its own seeded alike: its continuation is the same
        # whatever other prompts the file holds, and in whatever batches.
        context = how.context or max(len(t) for t in inputs)
        rows = []
        for tokens in inputs:
            new = generate(model, tokens, how.max_new_tokens, context, how.temperature, how.seed)
            rows.append({"prompt": decode(tokens.cpu()), "continuation": decode(new)})
        return rows

    # --- before training ----------------------------------------------------------------------------------
    def check(self, output, batch):
        tokens = batch[0] if isinstance(batch, (tuple, list)) else batch
        require(
            isinstance(tokens, torch.Tensor)
            and not tokens.is_floating_point()
            and tokens.dim() == 2
            and tokens.shape[1] >= 2,
            "language modeling needs batches (tokens,) of integer ids shaped [batch, block_size + 1], "
            f"got {describe(tokens)}",
        )
        expected = [tokens.shape[0], tokens.shape[1] - 1, self.vocab_size]
        require(
            list(output.shape) == expected,
            "language modeling needs model outputs of shape "
            f"[batch, tokens, vocab_size={self.vocab_size}] = {expected} "
            f"for tokens {list(tokens.shape)}, got {list(output.shape)}",
        )

    def check_targets(self, targets):
        not_integer = f"language modeling needs integer token ids, got {describe(targets)}"
        check_ids(targets, self.vocab_size, "token ids", "vocab_size", not_integer)


def generate(model, tokens, steps: int, context: int, temperature: float, seed: int) -> torch.Tensor:
    """`steps` tokens after `tokens` (1-D, on the model's device), each from the logits of the last
    `context` tokens, drawn at `temperature` (0: greedy) from a CPU generator seeded with `seed` (the
    draws are on the host; the training random state is untouched). Call under no_grad."""
    generator = torch.Generator().manual_seed(seed)
    tokens = tokens.view(1, -1)
    for _ in range(steps):
        logits = output_tensor(model(tokens[:, -context:]))[0, -1].float().cpu()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator)
        else:
            next_token = logits.argmax().view(1)
        tokens = torch.cat([tokens, next_token.view(1, 1).to(tokens.device)], dim=1)
    return tokens[0, tokens.shape[1] - steps :].cpu()


def decode(tokens: torch.Tensor) -> str:
    """Token ids as UTF-8 text, bad bytes replaced (ids past 255, of a larger vocabulary, left out)."""
    return bytes(t for t in tokens.tolist() if t < 256).decode("utf-8", errors="replace")
