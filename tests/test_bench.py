"""The benchmark runs and reports; it asserts nothing about speed (benchmarks are not tests)."""

import re
import subprocess

import pytest

from tests.helpers import PYTHON, REPO


@pytest.mark.slow
def test_bench_quick_prints_ratios_and_writes_the_table(tmp_path):
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [
            PYTHON,
            "scripts/bench.py",
            "--quick",
            "--processes",
            "2",
            "--warmup-trials",
            "0",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ratios = re.findall(r"^ratio (.+): (\d+\.\d+) \(template", proc.stdout, re.M)
    assert [name for name, _ in ratios] == ["mlp", "digits (default run)"]
    assert all(float(r) > 0 for _, r in ratios)

    doc = out.read_text()
    assert "<!-- bench:cpu -->" in doc and "<!-- /bench:cpu -->" in doc
    # One row per case, with the same ratio as printed (the median of its two processes' ratios, which
    # the row lists), and the startup and graph lines.
    for name, ratio in ratios:
        row = re.search(rf"^\| {re.escape(name)} \|.*\*\*{ratio}\*\* \| (\d\.\d+) (\d\.\d+) \|", doc, re.M)
        assert row, doc
        assert float(ratio) == pytest.approx((float(row[1]) + float(row[2])) / 2, abs=1e-3)
    assert "`python train.py --help` (imports torch: no)" in doc
    assert "tab completion" in doc and "(imports torch: no)" in doc
    assert "Graph logging" in doc
    # Template and raw loop trained identical weights: the comparison is on identical work.
    assert re.search(r"^\| mlp \|.*\| 0\.0e\+00 \|$", doc, re.M), doc


def test_bench_replaces_only_its_own_device_section(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import bench

    doc = tmp_path / "b.md"
    bench.write_section(doc, "cpu", "cpu one\n")
    bench.write_section(doc, "cuda", "gpu one\n")
    bench.write_section(doc, "cpu", "cpu two\n")
    text = doc.read_text()
    assert text.startswith("# Benchmarks")
    assert "cpu two" in text and "gpu one" in text and "cpu one" not in text
    assert text.index("cpu two") < text.index("gpu one")
