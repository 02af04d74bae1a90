"""Write one of the package's evaluation classifiers from a run of `genladder train classifier`.

    genladder train classifier --run-dir runs/classifier
    python scripts/ship_classifier.py runs/classifier
    genladder train classifier --preset resnet --run-dir runs/classifier-resnet
    python scripts/ship_classifier.py runs/classifier-resnet --second

Loads the run's newest EMA weights, measures their accuracy on the full MNIST test set (10,000 digits,
padded to 32×32), and writes src/genladder/evaluate/mnist_classifier.safetensors with the training
command, that accuracy and the run's training figures in the file's metadata.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genladder.checkpoint import atomic_write_bytes, model_file_bytes, read_json
from genladder.data import load_split, to_32
from genladder.evaluate import SECOND_CLASSIFIER, SHIPPED_CLASSIFIER
from genladder.evaluate.evaluation import classifier_accuracy
from genladder.runs import load_run, model_description


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished run of 'genladder train classifier'")
    parser.add_argument("--command", help="the training command to record (default: the documented one)")
    parser.add_argument("--second", action="store_true", help="ship the second opinion (default: the judge)")
    parser.add_argument("--out", help="where to write the file (default: the package's file)")
    args = parser.parse_args()
    if args.command is None:
        args.command = ("genladder train classifier --preset resnet --run-dir runs/classifier-resnet" if args.second
                        else "genladder train classifier --run-dir runs/classifier")
    args.out = args.out or str(SECOND_CLASSIFIER if args.second else SHIPPED_CLASSIFIER)

    run = load_run(args.run_dir, device="cpu")
    if run.kind != "classifier":
        sys.exit(f"{args.run_dir} is a {run.kind} run, not a classifier run")
    test = load_split("mnist", "test", data_dir=run.config["data"].get("data_dir"))
    accuracy = classifier_accuracy(run.model, to_32(test.images), test.labels)
    state = read_json(run.checkpoint / "trainer_state.json")
    description = model_description(run.config) | {"evaluation": {
        "command": args.command, "test_accuracy": accuracy["overall"], "test_images": len(test.labels),
        "per_class_accuracy": accuracy["per_class"], "weights": run.weights, "step": state["step"],
        "train_seconds": round(state["train_seconds"], 1), "genladder_version": run.config["genladder_version"],
        "images_seen": state.get("images_seen"), "preset": run.config.get("preset"),
    }}
    atomic_write_bytes(args.out, model_file_bytes(run.model, description))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB): test accuracy "
          f"{accuracy['overall'] * 100:.2f} % on {len(test.labels)} digits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
