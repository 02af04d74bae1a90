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
