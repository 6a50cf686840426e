"""--log-with: the training figures also go to one of accelerate's trackers (TensorBoard here), beside metrics.jsonl."""

import json

import pytest

from conftest import TINY_PRIOR, TINY_TOKENIZER, run_in_process
from pipelines import fit_prior, fit_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def scalars(event_dir):
    """{tag: [(step, value), ...]} of the TensorBoard event files in event_dir, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_losses_of_both_fits(fashion_dir, tmp_path):
    runs = tmp_path / "runs"
    fit_tokenizer.main([*TINY_TOKENIZER, "--epochs", "1", "--log-with", "tensorboard", "--output-root", runs,
                        "--run-name", "t"])
    run = runs / "tokenizer" / "t"
    assert json.loads((run / "config.json").read_text())["train"]["log_with"] == "tensorboard"
    logged = scalars(run / "trackers" / "tokenizer")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    assert len(expected) >= 3 and [step for step, _ in logged["loss"]] == [step for step, _ in expected]
    # (TensorBoard keeps float32)
    assert [value for _, value in logged["loss"]] == pytest.approx([value for _, value in expected], rel=1e-6)
    assert {"mse", "perplexity", "lr"} <= set(logged)

    fit_prior.main([*TINY_PRIOR, "--tokenizer", run, "--log-with", "tensorboard", "--output-root", runs,
                    "--run-name", "p"])
    logged = scalars(runs / "prior" / "p" / "trackers" / "prior")
    assert "loss" in logged and len(logged["test_bits_per_token"]) == 1  # one epoch, one evaluation


def test_a_tracker_that_is_not_installed_is_one_line_before_any_run_exists(fashion_dir, tmp_path, capsys):
    from accelerate.tracking import get_available_trackers

    missing = next(t for t in ("wandb", "mlflow", "aim", "clearml") if t not in map(str, get_available_trackers()))
    status, _, err = run_in_process(fit_tokenizer.main, [*TINY_TOKENIZER, "--log-with", missing, "--output-root",
                                                         tmp_path / "runs"], capsys)
    assert status == 2 and err == [f"error: --log-with {missing} needs its package: pip install {missing}"]
    assert not (tmp_path / "runs").exists()
    status, _, err = run_in_process(fit_tokenizer.main, ["--log-with", "printer"], capsys)
    assert status == 2 and "invalid choice: 'printer'" in err[0]
