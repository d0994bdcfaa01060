"""The language-modeling task (loss over every token, bits per character, a seeded sample), the pytext
data (stdlib files split by file) and the GPT. A fork that deletes the task, the data or the model skips
these."""

from __future__ import annotations

import math

import pytest
import torch

lm = pytest.importorskip("tasks.language_modeling")
pytext = pytest.importorskip("data.pytext")
gpt = pytest.importorskip("models.gpt")

from tasks.base import TaskError  # noqa: E402

V = 256


def tokens(b=3, t=9, seed=0):
    return torch.randint(0, V, (b, t + 1), generator=torch.Generator().manual_seed(seed))


def sums_of(task, pieces):
    sums = task.init_metrics(torch.device("cpu"))
    for output, batch in pieces:
        task.update(sums, output, batch)
    return sums


def test_inputs_targets_and_count_shift_by_one_token():
    task = lm.LanguageModeling(vocab_size=V)
    batch = (tokens(),)
    assert torch.equal(task.inputs(batch), batch[0][:, :-1]) and torch.equal(
        task.targets(batch), batch[0][:, 1:]
    )
    assert task.count(batch) == 3 * 9 and task.unit == "tokens"
    assert task.example_input(batch).shape == (2, 9) and task.images(batch) is None


def test_loss_and_bits_per_character():
    task = lm.LanguageModeling(vocab_size=V)
    batch = (tokens(),)
    # Uniform logits: ln V nats a token, 8 bits a byte.
    uniform = task.compute(sums_of(task, [(torch.zeros(3, 9, V), batch)]))
    assert uniform["loss"] == pytest.approx(math.log(V)) and uniform["bpc"] == pytest.approx(8.0)
    logits = torch.randn(3, 9, V, generator=torch.Generator().manual_seed(1))
    metrics = task.compute(sums_of(task, [(logits, batch)]))
    by_hand = -torch.log_softmax(logits, -1).gather(-1, batch[0][:, 1:, None]).mean().item()
    assert metrics["loss"] == pytest.approx(by_hand, rel=1e-6) == task.loss(logits, batch).item()
    assert metrics["bpc"] == pytest.approx(by_hand / math.log(2), rel=1e-6)


def test_sums_add_over_batches():
    task = lm.LanguageModeling(vocab_size=V)
    batch, logits = tokens(b=5), torch.randn(5, 9, V)
    whole = task.compute(sums_of(task, [(logits, (batch,))]))
    halves = task.compute(sums_of(task, [(logits[:2], (batch[:2],)), (logits[2:], (batch[2:],))]))
    assert halves == pytest.approx(whole, rel=1e-6)  # float32 sums a batch, float64 across
    assert int(sums_of(task, [(logits, (batch,))])["tokens"]) == 5 * 9


def test_check_names_the_shapes():
    task = lm.LanguageModeling(vocab_size=V)
    batch = (tokens(b=2, t=4),)
    task.check(torch.zeros(2, 4, V), batch)
    with pytest.raises(TaskError, match=r"\[batch, tokens, vocab_size=256\] = \[2, 4, 256\].*got \[2, 256\]"):
        task.check(torch.zeros(2, V), batch)
    with pytest.raises(TaskError, match=r"integer ids.*float32 \[2, 5\]"):
        task.check(torch.zeros(2, 4, V), (batch[0].float(),))
    with pytest.raises(TaskError, match=r"from 0 to 300, outside 0..255"):
        task.check_targets(torch.tensor([0, 300]))


def test_gpt_is_causal_and_shaped_batch_tokens_vocab():
    torch.manual_seed(0)
    model = gpt.GPT(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32).eval()
    x = tokens(b=2, t=15)[:, :16]
    out = model(x)
    assert out.shape == (2, 16, V)
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % V  # the future changes ...
    assert torch.allclose(model(changed)[:, :10], out[:, :10], atol=1e-5)  # ... the past's logits do not
    with pytest.raises(ValueError, match="block_size=16"):
        model(tokens(b=1, t=20))


def test_sample_is_seeded_and_leaves_the_training_rng_alone(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from tests.helpers import event_accumulator

    torch.manual_seed(0)
    model = gpt.GPT(vocab_size=V, block_size=8, n_layer=1, n_head=1, n_embd=16).eval()
    task = lm.LanguageModeling(vocab_size=V, prompt="def ", sample_tokens=12)
    state = torch.get_rng_state()
    with torch.no_grad():
        first, second = task.sample(model, 8, torch.device("cpu")), task.sample(model, 8, torch.device("cpu"))
    assert first == second and first.startswith("def ")
    assert torch.equal(torch.get_rng_state(), state)
    writer = SummaryWriter(tmp_path / "tb")
    with torch.no_grad():
        task.log_pictures(writer, {}, model, (tokens(b=2, t=8),), step=7)
    writer.close()
    assert "val/sample/text_summary" in event_accumulator(tmp_path).Tags()["tensors"]


def write_tree(root, files: dict[str, bytes]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)


def test_pytext_reads_sorted_files_leaves_out_tests_and_packages_and_splits_by_file(tmp_path):
    kept = {f"pkg/m{i:02d}.py": f"# module {i}\n".encode() * (i + 3) for i in range(20)}
    left_out = {
        "site-packages/foo.py": b"x" * 50,
        "test/test_os.py": b"y" * 50,
        "lib2to3/tests/data.py": b"z" * 50,
        "idlelib/idle_test/t.py": b"w" * 50,
        "ensurepip/_bundled/p.py": b"v" * 50,
        "notes.txt": b"u" * 50,
    }
    write_tree(tmp_path, {**kept, **left_out})
    files = pytext.source_files(tmp_path, max_bytes=10**6)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == sorted(kept)
    # The cap: files in sorted order until the next would pass it.
    capped = pytext.source_files(tmp_path, max_bytes=len(kept["pkg/m00.py"]) + len(kept["pkg/m01.py"]))
    assert [p.name for p in capped] == ["m00.py", "m01.py"]
    train, val, test = pytext.split_files(files, 0.2, 0.2, split_seed=0)
    assert (len(train), len(val), len(test)) == (12, 4, 4)
    assert set(train) | set(val) | set(test) == set(files)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert pytext.split_files(files, 0.2, 0.2, split_seed=0) == (train, val, test)
    assert pytext.split_files(files, 0.2, 0.2, split_seed=1) != (train, val, test)
    splits = pytext.pytext(
        block_size=8, max_bytes=10**6, val_fraction=0.2, test_fraction=0.2, split_seed=0, root=tmp_path
    )
    (rows,) = splits.val.tensors
    assert rows.dtype == torch.long and rows.shape[1] == 9
    # The val rows are the val files' bytes, in order, overlapping by one byte.
    text = b"".join(p.read_bytes() for p in val)
    assert bytes(rows[:, :-1].flatten().tolist()) == text[: 8 * len(rows)]
    assert torch.equal(rows[1:, 0], rows[:-1, -1])
    again = pytext.pytext(
        block_size=8, max_bytes=10**6, val_fraction=0.2, test_fraction=0.2, split_seed=0, root=tmp_path
    )
    assert torch.equal(again.train.tensors[0], splits.train.tensors[0])


def test_pytext_finds_the_standard_library_and_says_when_it_cannot(tmp_path, monkeypatch):
    root = pytext.stdlib_root()
    files = pytext.source_files(root, max_bytes=200_000)
    assert files and all(not pytext.EXCLUDED_DIRS & set(p.relative_to(root).parts) for p in files)
    monkeypatch.setattr(pytext.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path / "nowhere")})
    with pytest.raises(pytext.DatasetError, match="standard library"):
        pytext.pytext(block_size=8, max_bytes=1000, val_fraction=0.2, test_fraction=0.2, split_seed=0)
    write_tree(tmp_path / "few", {"a.py": b"x = 1\n"})
    with pytest.raises(pytext.DatasetError, match="at least 3"):
        pytext.pytext(8, 1000, 0.2, 0.2, 0, root=tmp_path / "few")
