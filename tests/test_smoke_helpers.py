from tests.helpers import FAST, event_accumulator, read_metrics, train_in_process


def test_in_process_training_writes_a_run(tmp_path):
    run = tmp_path / "run"
    best = train_in_process([*FAST, "logging.graph=true"], run)
    assert 0.0 <= best <= 1.0
    assert "test/acc" in read_metrics(run)
    assert event_accumulator(run).Tags()["graph"]
