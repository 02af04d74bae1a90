"""One torchrun worker for tests/test_distributed.py: ``python -m genladder ARGS``, then dump what the test checks.

Usage: ``torchrun --nproc_per_node=2 tests/ddp_worker.py OUT_DIR train …``. The command line runs
exactly as ``torchrun -m genladder train …`` would; afterwards each process writes its final
weights to ``OUT_DIR/rank<r>.safetensors`` and the loss of each of its training batches (before
any averaging over processes) to ``OUT_DIR/rank<r>-losses.json``.
"""

import json
import os
import runpy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import genladder.runs as runs

out = Path(sys.argv.pop(1))
captured: dict = {}
losses: list[float] = []
real_train, real_make_objective = runs.train, runs.make_objective


def train(model, *args, **kwargs):
    captured["model"] = model
    return real_train(model, *args, **kwargs)


def make_objective(*args):
    objective = real_make_objective(*args)

    def recorded(model, images, labels, generator=None, **options):
        loss, metrics = objective(model, images, labels, generator=generator, **options)
        if generator is None:  # training batches (evaluation passes a fixed generator)
            losses.append(metrics["loss"])
        return loss, metrics

    recorded.reads_images_seen = getattr(objective, "reads_images_seen", False)  # the loop's schedule hand-off
    return recorded


runs.train, runs.make_objective = train, make_objective
torch.set_num_threads(1)
try:
    runpy.run_module("genladder", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit_:
    code = exit_.code
if "model" in captured:
    state = {name: tensor.detach().contiguous() for name, tensor in captured["model"].state_dict().items()}
    save_file(state, out / f"rank{os.environ['RANK']}.safetensors")
    (out / f"rank{os.environ['RANK']}-losses.json").write_text(json.dumps(losses))
sys.exit(code)
