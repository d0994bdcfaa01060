"""The benchmark runs and reports; it asserts nothing about speed (benchmarks are not tests)."""

import re
import subprocess

import pytest

from tests.helpers import PYTHON, REPO


@pytest.mark.slow
def test_bench_quick_prints_paired_ratios_and_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import bench

    cases = [case.name for case in bench.cases_for("cpu", quick=True).values()]  # those this checkout has
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [PYTHON, "tools/bench.py", "--quick", "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ratios = re.findall(
        r"^ratio (.+): (\d+\.\d+) \[(\d+\.\d+), (\d+\.\d+)\] (meets|below|cannot tell) ", proc.stdout, re.M
    )
    assert [r[0] for r in ratios] == cases, proc.stdout
    for name, ratio, low, high, _ in ratios:
        assert 0 < float(low) <= float(ratio) <= float(high), (name, ratio, low, high)

    doc = out.read_text()
    assert "<!-- bench:cpu -->" in doc and "<!-- /bench:cpu -->" in doc
    # One row per case with the printed ratio and interval, in samples/s or (the GPT) tokens/s.
    for name, ratio, low, high, verdict in ratios:
        row = re.search(
            rf"^\| {re.escape(name)} \|.*\*\*{ratio}\*\* \| {low} - {high} \| {verdict} \|", doc, re.M
        )
        assert row, doc
    if "gpt (language modeling)" in cases:
        assert re.search(r"^\| gpt \(language modeling\) \|.* tokens \|", doc, re.M), doc
    # Template and raw loop trained identical weights: the comparison is on identical work.
    for name in cases:
        assert re.search(rf"^\| {re.escape(name)} \|.*\| 0\.0e\+00 \|$", doc, re.M), doc
    # The end-to-end table: the default run against the hand-written script, where it can write that run.
    if default_run_is_handwritten(tmp_path):
        assert re.search(r"^\| `python train\.py.*\| \d+\.\d+ \|", doc, re.M), doc
    else:
        assert "e2e default: left out: tools/handwritten_train.py cannot write this run" in proc.stdout
    assert "`python train.py --help` (imports torch: no)" in doc
    assert "tab completion" in doc and "(imports torch: no)" in doc
    if bench.available(["model=mlp", "data=fake"]):  # what the quick graph timing traces
        assert "Graph logging" in doc


def default_run_is_handwritten(tmp_path) -> bool:
    from bench_e2e import QUICK, spec_of
    from bench_paired import compose
    from handwritten_train import cannot_write

    return cannot_write(spec_of(compose(QUICK["default"][1], tmp_path / "compose"))) is None


def test_the_hand_written_script_says_which_runs_it_cannot_write(tmp_path, monkeypatch):
    """A project whose default run is a fork's own task, or data that is not in-memory tensors, has its
    end-to-end row left out with the reason, not a failed benchmark."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from bench_e2e import QUICK, spec_of
    from bench_paired import compose
    from handwritten_train import KINDS, cannot_write

    spec = spec_of(compose(QUICK["default"][1], tmp_path / "compose"))
    if spec["kind"] in KINDS and cannot_write(spec) is None:
        assert "none of those" in cannot_write({**spec, "kind": "multilabel"})
    lazy = {**spec, "kind": KINDS[0], "dataset": {"_target_": "tests.test_bench.files_on_disk"}}
    assert "is not in-memory tensors" in cannot_write(lazy)


def files_on_disk():
    """Splits of a dataset read sample by sample (as a folder of images would be), for the test above."""
    from torch.utils.data import Dataset

    from data.splits import Splits

    class Files(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return i

    return Splits(Files(), Files(), Files())


def test_bootstrap_interval_and_verdict(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import bench_paired

    med, low, high = bench_paired.bootstrap_median([1.0, 1.01, 0.99, 1.02, 0.98] * 20)
    assert low <= med == 1.0 <= high and high - low < 0.05
    assert bench_paired.verdict(0.981, 1.02) == "meets"
    assert bench_paired.verdict(0.90, 0.979) == "below"
    assert bench_paired.verdict(0.97, 1.01) == "cannot tell"


def test_bench_replaces_only_its_own_device_section(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import bench

    doc = tmp_path / "b.md"
    bench.write_section(doc, "cpu", "cpu one\n")
    bench.write_section(doc, "cuda", "gpu one\n")
    bench.write_section(doc, "cpu", "cpu two\n")
    text = doc.read_text()
    assert text.startswith("# Benchmarks")
    assert "cpu two" in text and "gpu one" in text and "cpu one" not in text
    assert text.index("cpu two") < text.index("gpu one")


def test_cases_follow_the_configs_on_disk(tmp_path, monkeypatch):
    """A generated project with some models, datasets and tasks benchmarks those it has, and an asked-for
    case it lacks is one line."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from bench_paired import available

    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "model" / "mlp.yaml").write_text("{}")
    assert available(["model=mlp", "trainer.max_steps=5"], conf=tmp_path)
    assert not available(["model=mlp", "data=fake"], conf=tmp_path)
    assert not available(["model=gpt"], conf=tmp_path)
    result = subprocess.run(
        [PYTHON, "tools/bench.py", "--cases", "nope"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "error: no case nope here (this checkout has: " in result.stderr.strip().splitlines()[-1]
