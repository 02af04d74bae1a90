"""Training progress on stderr: the bar on a terminal, one plain line per record in a file, JSON on request."""

from __future__ import annotations

import io
import json

import pytest

from genladder.errors import GenladderError
from genladder.training.progress import ProgressReport, duration, resolve_log_format


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(step: int) -> dict:
    return {"split": "train", "step": step, "epoch": step / 10, "loss": 0.5 / step, "images_per_s": 40.0,
            "train_seconds": 3.0 * step}


class TestFormat:
    def test_auto_is_the_bar_on_a_terminal_and_lines_in_a_file(self):
        assert resolve_log_format("auto", Terminal()) == "bar"
        assert resolve_log_format("auto", io.StringIO()) == "lines"
        assert resolve_log_format("json", Terminal()) == "json"

    def test_unknown_format_refused(self):
        with pytest.raises(GenladderError, match="--log-format must be one of auto, bar, lines, json"):
            resolve_log_format("xml")

    @pytest.mark.parametrize("seconds, text", [(7.4, "7s"), (302, "5m02s"), (3725, "1h02m05s"), (-3, "0s")])
    def test_duration(self, seconds, text):
        assert duration(seconds) == text


class TestReport:
    def test_lines_are_whole_lines_with_eta(self):
        stream = io.StringIO()
        report = ProgressReport("auto", start=0, total=20, stream=stream)
        for step in range(1, 21):
            report.step()
            if step % 10 == 0:
                report.record(record(step))
        report.close()
        lines = stream.getvalue().splitlines()
        assert "\r" not in stream.getvalue() and len(lines) == 2
        assert lines[0].startswith("step 10/20 (epoch 1.00) loss 0.05 · 40 images/s · 30s elapsed · ETA ")
        assert lines[1] == "step 20/20 (epoch 2.00) loss 0.025 · 40 images/s · 1m00s elapsed"  # no ETA at the end

    def test_json_records_parse(self):
        stream = io.StringIO()
        report = ProgressReport("json", start=5, total=20, stream=stream)
        report.record(record(10))
        line = json.loads(stream.getvalue())
        assert line["step"] == 10 and line["total_steps"] == 20 and line["elapsed_s"] == 30.0
        assert line["eta_s"] >= 0

    def test_disabled_prints_nothing(self):
        stream = Terminal()
        report = ProgressReport("bar", start=0, total=3, enabled=False, stream=stream)
        report.step()
        report.record(record(1))
        report.close()
        assert stream.getvalue() == ""


class TestTensorBoard:
    """``--tensorboard``: the records of metrics.jsonl and the preview grids, read back with TensorBoard's reader."""

    @staticmethod
    def read_events(run_dir):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        return events

    def test_scalars_and_grids_match_the_run_and_a_resume_drops_what_it_forgets(self, tmp_path, capsys, mini_mnist):
        from genladder.training.loop import read_metrics
        from tests.test_cli import run_cli, tiny_train_args

        run_dir = tmp_path / "ae"
        args = tiny_train_args("ae", run_dir, mini_mnist, "--log-every", 2, "--checkpoint-every", 4,
                               "--keep-checkpoints", 5, "--tensorboard")
        assert run_cli(capsys, *args)[0] == 0
        # lose the last checkpoint: the resume restarts at step 8, and the first session's events for
        # steps 9..12 must be dropped (else TensorBoard shows them twice, one of them from a run nobody kept)
        (run_dir / "latest.json").unlink()
        for stale in sorted((run_dir / "checkpoints").glob("step_*"))[-1:]:
            for file in stale.iterdir():
                file.unlink()
            stale.rmdir()
        assert run_cli(capsys, "train", "--resume", run_dir, "--tensorboard", "--no-progress")[0] == 0

        events = self.read_events(run_dir)
        records = read_metrics(run_dir / "metrics.jsonl").records
        for split in ("train", "test"):
            wanted = [(r["step"], r["loss"]) for r in records if r["split"] == split]
            got = [(e.step, e.value) for e in events.Scalars(f"{split}/loss")]
            assert [step for step, _ in got] == [step for step, _ in wanted]  # each step once, in order
            assert [value for _, value in got] == pytest.approx([value for _, value in wanted], rel=1e-6)
        lr = [e.step for e in events.Scalars("train/lr")]
        assert lr == [2, 4, 6, 8, 10, 12]
        grids = events.Images("samples")  # the previews: the epoch's end (8 steps of 32) and the run's end
        assert [grid.step for grid in grids] == [8, 12]
        assert all(grid.encoded_image_string.startswith(b"\x89PNG") and grid.width > 0 for grid in grids)

    def test_missing_package_is_a_one_line_error(self, tmp_path, capsys, mini_mnist, monkeypatch):
        import sys

        from tests.test_cli import run_cli, tiny_train_args

        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import of it raises ImportError
        code, _, err = run_cli(capsys, *tiny_train_args("ae", tmp_path / "ae", mini_mnist, "--tensorboard"))
        assert code == 2 and "pip install 'genladder[tensorboard]'" in err and not (tmp_path / "ae").exists()
