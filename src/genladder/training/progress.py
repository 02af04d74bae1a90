"""How a training run reports its progress: a bar on a terminal, plain lines in a log file, JSON for machines.

tqdm redraws one line with carriage returns, which is right on a terminal and wrong in a file: a 3,254-step
run logged to a file was one 245 KB line. So the format follows where stderr goes (``"auto"``):

* ``"bar"``   — tqdm's bar, with the running loss and images/s;
* ``"lines"`` — one line per record (every ``log_every`` steps and at each epoch's end):
  ``step 200/860 (epoch 0.43) loss 0.0931 · 41 images/s · 5m02s elapsed · ETA 13m17s``;
* ``"json"``  — the same record as one JSON object per line (the fields of ``metrics.jsonl`` plus
  ``total_steps``, ``elapsed_s`` and ``eta_s``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

from genladder.errors import GenladderError

LOG_FORMATS = ("auto", "bar", "lines", "json")


def resolve_log_format(log_format: str, stream: TextIO | None = None) -> str:
    """``log_format`` with "auto" replaced: the bar on a terminal, lines otherwise."""
    if log_format not in LOG_FORMATS:
        raise GenladderError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    if log_format != "auto":
        return log_format
    stream = stream if stream is not None else sys.stderr
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


def duration(seconds: float) -> str:
    """3725 → '1h02m05s', 302 → '5m02s', 7.4 → '7s'."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressReport:
    """Progress of one training session from step ``start`` to ``total`` (silent when ``enabled`` is False)."""

    def __init__(self, log_format: str, start: int, total: int, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.format = resolve_log_format(log_format, self.stream) if enabled else "none"
        self.start, self.total = start, total
        self.began = time.perf_counter()  # this session's clock: a resumed run's ETA is from its own pace
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=self.stream,
                        disable=self.format != "bar")

    def step(self) -> None:
        self.bar.update(1)

    def record(self, record: dict) -> None:
        """One train record (the ``metrics.jsonl`` fields: step, epoch, loss, images_per_s, train_seconds)."""
        step = record["step"]
        done = step - self.start
        eta = (time.perf_counter() - self.began) / done * (self.total - step) if done > 0 else None
        if self.format == "bar":
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", img_s=f"{record['images_per_s']:.0f}")
        elif self.format == "json":
            line = {**record, "total_steps": self.total, "elapsed_s": record["train_seconds"], "eta_s": eta}
            print(json.dumps(line), file=self.stream, flush=True)
        elif self.format == "lines":
            eta_text = f" · ETA {duration(eta)}" if eta is not None and step < self.total else ""
            print(f"step {step}/{self.total} (epoch {record['epoch']:.2f}) loss {record['loss']:.4g} · "
                  f"{record['images_per_s']:.0f} images/s · {duration(record['train_seconds'])} elapsed{eta_text}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()
