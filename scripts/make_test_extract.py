"""Write a small, class-balanced MNIST extract as the four gzipped IDX files.

    python scripts/make_test_extract.py --source /work/shared/data/mnist \
        --out tests/data/mnist-mini --train 3000 --test 1000 --seed 0

The extract has the published file names, so it loads through exactly the same code as the full
set: `load_split("mnist", "train", data_dir="tests/data/mnist-mini")`. Each class gets n // 10
samples (the first n % 10 classes one more), drawn without replacement and then shuffled so that
any prefix (`limit=`) is also roughly balanced. Output is byte-for-byte deterministic: a seeded
numpy Generator and gzip with mtime=0.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

from genladder.data import DATASETS, load_split
from genladder.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from genladder.errors import GenladderError


def balanced_indices(labels: np.ndarray, n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n samples, n // num_classes per class (remainder to the lowest classes), shuffled."""
    picked = []
    for c in range(num_classes):
        want = n // num_classes + (1 if c < n % num_classes else 0)
        pool = np.flatnonzero(labels == c)
        if want > pool.size:
            raise GenladderError(f"class {c} has only {pool.size} samples, {want} requested")
        picked.append(rng.choice(pool, size=want, replace=False))
    return rng.permutation(np.concatenate(picked))


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Encode a uint8 array as IDX: big-endian magic, one uint32 per dimension, raw payload."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_gz(path: Path, raw: bytes) -> None:
    # mtime=0 and no file name in the header make the .gz identical on every run.
    path.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="folder holding the full MNIST files")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the extract into")
    parser.add_argument("--train", type=int, default=3000, help="train samples to keep")
    parser.add_argument("--test", type=int, default=1000, help="test samples to keep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    spec = DATASETS["mnist"]
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for split, n in (("train", args.train), ("test", args.test)):
            full = load_split(spec, split, data_dir=args.source, download=False)
            idx = balanced_indices(full.labels.numpy(), n, spec.num_classes, rng)
            images = full.images.numpy()[idx, 0]  # (n, 28, 28)
            labels = full.labels.numpy()[idx].astype(np.uint8)  # (n,)
            files = spec.split(split)
            for file, raw in (
                (files.images, idx_bytes(images, IMAGES_MAGIC)),
                (files.labels, idx_bytes(labels, LABELS_MAGIC)),
            ):
                path = args.out / f"{file.name}.gz"
                write_gz(path, raw)
                print(f"{path}  {path.stat().st_size} bytes  raw md5 {hashlib.md5(raw).hexdigest()}")
    except GenladderError as exc:
        print(f"make_test_extract: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
