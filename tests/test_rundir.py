"""Run-directory names: unique under a same-second race, and safe for TensorBoard's HTTP API and shells."""

from __future__ import annotations

import os

from store.rundir import safe_name, short_name, unique_run_dir


def test_safe_name_keeps_only_safe_characters():
    assert safe_name('my "exp"; rm -rf $HOME `x`') == "my_exp_rm_-rf_HOME_x"
    assert safe_name("lr=3e-4,bs=64") == "lr_3e-4_bs_64"
    assert safe_name("../..") == "run"
    assert safe_name(".hidden") == "hidden"


def test_same_second_runs_get_distinct_directories(tmp_path):
    import store.rundir as rundir

    first = unique_run_dir(str(tmp_path), "mlp", "digits")
    rundir._reserved.clear()  # as a second process would start with nothing reserved
    second = unique_run_dir(str(tmp_path), "mlp", "digits")
    assert first != second
    assert (tmp_path / first).is_dir() and (tmp_path / second).is_dir()


def test_the_answer_is_stable_within_a_process(tmp_path):
    # Hydra resolves hydra.run.dir several times during one run; all must agree.
    assert unique_run_dir(str(tmp_path), "x", "") == unique_run_dir(str(tmp_path), "x", "")


def test_a_long_name_is_shortened_with_a_hash_of_the_whole(tmp_path):
    """Two long names that share their start get two short ones; either makes a directory."""
    import store.rundir as rundir

    names = ["x" * 240, "x" * 239 + "y"]
    short = [short_name(n) for n in names]
    assert short[0] != short[1] and all(len(s) < 200 for s in short)
    assert short_name("short") == "short"
    made = []
    for name in names:
        rundir._reserved.clear()
        made.append(unique_run_dir(str(tmp_path), "mlp", "digits", name))
    assert made[0] != made[1] and all(
        (tmp_path / m).is_dir() and len(os.path.basename(m)) < 200 for m in made
    )
