"""Tests for genladder.data: IDX parsing, file lookup/download, checksums, transforms.

Digits come from the committed extract tests/data/mnist-mini; tests that need the full MNIST use
$GENLADDER_DATA_DIR (or /work/shared/data/mnist) and skip when it is absent. The only network
used is a local http.server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from genladder.data import (
    DATASETS,
    FileSpec,
    ImageSet,
    SplitSpec,
    default_cache_dir,
    from_signed,
    from_unit,
    load_split,
    sources,
    to_32,
    to_signed,
    to_unit,
)
from genladder.errors import GenladderError

MINI = Path(__file__).parent / "data" / "mnist-mini"
FULL = Path(os.environ.get("GENLADDER_DATA_DIR") or "/work/shared/data/mnist")
HAVE_FULL = any((FULL / f).is_file() for f in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"))
needs_full = pytest.mark.skipif(not HAVE_FULL, reason=f"full MNIST not found in {FULL}")
NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Keep every test away from the real user cache and any ambient data dir."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GENLADDER_CACHE_DIR", str(cache))
    monkeypatch.delenv("GENLADDER_DATA_DIR", raising=False)
    return cache


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode an IDX file independently of the library (magic defaults to ubyte + ndim)."""
    magic = 0x800 + array.ndim if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@functools.lru_cache(maxsize=2)
def mini(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The extract's (images (N, 28, 28), labels (N,)) as uint8 arrays, decoded by hand."""
    out = []
    for name in NAMES[split]:
        raw = gzip.decompress((MINI / f"{name}.gz").read_bytes())
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        out.append(np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims))
    return out[0], out[1]


def write_split(folder: Path, split: str, images: bytes, labels: bytes, gz: bool = True) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, raw in zip(NAMES[split], (images, labels), strict=True):
        path = folder / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw)
        paths.append(path)
    return paths[0], paths[1]


def mini_spec(name: str, mirrors: tuple[str, ...], checksum: str = "raw"):
    """A spec whose 'full' files are the extract's, checked by raw or by .gz MD5."""
    base = DATASETS[name]

    def file(fname: str, count: int) -> FileSpec:
        stored = (MINI / f"{fname}.gz").read_bytes()
        if checksum == "raw":
            return FileSpec(fname, count, raw_md5=hashlib.md5(gzip.decompress(stored)).hexdigest())
        return FileSpec(fname, count, gz_md5=hashlib.md5(stored).hexdigest())

    return replace(
        base,
        mirrors=mirrors,
        train=SplitSpec(file(NAMES["train"][0], 3000), file(NAMES["train"][1], 3000)),
        test=SplitSpec(file(NAMES["test"][0], 1000), file(NAMES["test"][1], 1000)),
    )


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        body = self.server.routes.get(self.path, 404)
        if isinstance(body, int):
            self.send_error(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server; set `.routes[path] = bytes | status`, read `.hits` and `.url`."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.hits = {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone"  # nothing listens: connection refused


def serve_split(httpd, prefix: str, split: str, corrupt: bool = False) -> None:
    for name in NAMES[split]:
        stored = (MINI / f"{name}.gz").read_bytes()
        if corrupt:  # valid gzip, wrong content: only the checksum can catch it
            raw = bytearray(gzip.decompress(stored))
            raw[-1] ^= 0xFF
            stored = gzip.compress(bytes(raw), compresslevel=1, mtime=0)
        httpd.routes[f"/{prefix}/{name}.gz"] = stored


class TestLoading:
    @needs_full
    def test_full_mnist(self):
        for split, n in (("train", 60000), ("test", 10000)):
            s = load_split("mnist", split, data_dir=FULL, download=False)
            assert (s.images.shape, s.images.dtype) == ((n, 1, 28, 28), torch.uint8)
            assert (s.labels.shape, s.labels.dtype) == ((n,), torch.int64)
            assert (s.name, s.split, s.num_classes, len(s)) == ("mnist", split, 10, n)
            counts = torch.bincount(s.labels, minlength=10)
            assert counts.numel() == 10 and counts.min() > 0.08 * n and counts.max() < 0.12 * n
            assert 30 < s.images.float().mean() < 37  # the well-known MNIST mean 0.1307 × 255

    def test_extract(self):
        for split, n in (("train", 3000), ("test", 1000)):
            s = load_split("mnist", split, data_dir=MINI, download=False)
            images, labels = mini(split)
            assert s.images.shape == (n, 1, 28, 28) and s.labels.dtype == torch.int64
            assert torch.equal(s.images[:, 0], torch.from_numpy(images.copy()))
            assert torch.equal(torch.bincount(s.labels), torch.full((10,), n // 10))

    def test_limit(self):
        full = load_split("mnist", "train", data_dir=MINI)
        part = load_split("mnist", "train", data_dir=MINI, limit=7)
        assert torch.equal(part.images, full.images[:7]) and torch.equal(part.labels, full.labels[:7])
        assert len(load_split("mnist", "test", data_dir=MINI, limit=10**6)) == 1000
        for bad in (0, -1, 2.5, True):
            with pytest.raises(GenladderError, match="limit must be a positive integer"):
                load_split("mnist", "train", data_dir=MINI, limit=bad)

    def test_results_are_private_copies(self):
        a = load_split("mnist", "test", data_dir=MINI)
        a.images.zero_()
        assert load_split("mnist", "test", data_dir=MINI).images.any()

    def test_each_file_read_once(self, tmp_path, monkeypatch):
        folder = tmp_path / "d"
        folder.mkdir()
        for name in NAMES["test"]:
            (folder / f"{name}.gz").write_bytes((MINI / f"{name}.gz").read_bytes())
        calls = []
        real = sources.read_idx
        monkeypatch.setattr(sources, "read_idx", lambda p: calls.append(p) or real(p))
        load_split("mnist", "test", data_dir=folder)
        load_split("mnist", "test", data_dir=folder, limit=5)
        assert len(calls) == 2

    def test_subfolder_env_and_uncompressed(self, tmp_path, monkeypatch):
        images, labels = mini("test")
        write_split(tmp_path / "d" / "mnist", "test", idx_bytes(images), idx_bytes(labels), gz=False)
        monkeypatch.setenv("GENLADDER_DATA_DIR", str(tmp_path / "d"))
        assert len(load_split("mnist", "test", download=False)) == 1000

    def test_bad_names(self, tmp_path):
        with pytest.raises(GenladderError, match="unknown dataset 'cifar'"):
            load_split("cifar", "train")
        with pytest.raises(GenladderError, match="unknown split 'val'"):
            load_split("mnist", "val", data_dir=MINI)
        with pytest.raises(GenladderError, match="is not a folder"):
            load_split("mnist", "train", data_dir=tmp_path / "nope")

    def test_imageset_validates(self):
        with pytest.raises(GenladderError, match="uint8"):
            ImageSet(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.int64), "x", "train")

    def test_default_cache_dir(self, monkeypatch, tmp_path):
        assert default_cache_dir() == tmp_path / "cache"
        monkeypatch.delenv("GENLADDER_CACHE_DIR")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert default_cache_dir() == tmp_path / "xdg" / "genladder"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert default_cache_dir() == Path.home() / ".cache" / "genladder"


@functools.lru_cache(maxsize=1)
def _cases():
    images, labels = mini("train")
    img, lab = idx_bytes(images), idx_bytes(labels)
    out_of_range = labels.copy()
    out_of_range[5] = 10
    return {
        "truncated": (
            img[: 16 + 1000],
            lab,
            0,
            "truncated: header says 3000 images of 28×28 (2352000 bytes), file holds 1000 bytes",
        ),
        "trailing": (img + b"\0\0", lab, 0, "trailing data"),
        "header cut": (img[:10], lab, 0, "truncated: header declares 3 dimensions"),
        "bad magic": (b"\x12\x34" + img[2:], lab, 0, "not an IDX file: bad magic number 0x12340803"),
        "float type": (img[:2] + b"\x0d" + img[3:], lab, 0, "unsupported IDX element type 0x0d"),
        "labels file as images": (lab, lab, 0, "expected an IDX image file (magic 0x00000803), found"),
        "images file as labels": (img, img, 1, "expected an IDX label file (magic 0x00000801), found"),
        "wrong size": (
            idx_bytes(images[:, :27]),
            lab,
            0,
            "expected 28×28 images, header says 3000 images of 27",
        ),
        "count mismatch": (img, idx_bytes(labels[:2999]), 0, "holds 3000 images but"),
        "label out of range": (img, idx_bytes(out_of_range), 1, "label 10 at index 5 is out of range [0, 10"),
    }


class TestBadFiles:
    @pytest.mark.parametrize("case", list(_cases()))
    def test_structure(self, tmp_path, case):
        img, lab, bad, message = _cases()[case]
        paths = write_split(tmp_path / "d", "train", img, lab)
        with pytest.raises(GenladderError) as info:
            load_split("mnist", "train", data_dir=tmp_path / "d", download=False)
        text = str(info.value)
        assert text.startswith(f"{paths[bad]}: ") and message in text and "\n" not in text

    @pytest.mark.parametrize("damage", ["cut", "flip", "not gzip"])
    def test_corrupt_gzip(self, tmp_path, damage):
        write_split(tmp_path / "d", "test", *(idx_bytes(a) for a in mini("test")))
        path = tmp_path / "d" / "t10k-images-idx3-ubyte.gz"
        stored = bytearray(path.read_bytes())
        if damage == "cut":
            stored = stored[: len(stored) // 2]
        elif damage == "flip":
            stored[len(stored) // 2] ^= 0xFF
        else:
            stored = bytearray(gzip.decompress(bytes(stored)))
        path.write_bytes(bytes(stored))
        with pytest.raises(GenladderError, match=f"^{path}: corrupt gzip data"):
            load_split("mnist", "test", data_dir=tmp_path / "d")

    def test_full_size_fake_fails_checksum(self, tmp_path):
        # Structurally valid files with the full published count must be the real MNIST.
        images, labels = mini("test")
        paths = write_split(
            tmp_path / "d",
            "test",
            idx_bytes(np.tile(images, (10, 1, 1))),
            idx_bytes(np.tile(labels, 10)),
            gz=False,
        )
        with pytest.raises(GenladderError, match=f"^{paths[0]}: checksum mismatch: holds the full 10000"):
            load_split("mnist", "test", data_dir=tmp_path / "d")

    @needs_full
    def test_real_file_with_flipped_byte(self, tmp_path):
        folder = tmp_path / "d"
        folder.mkdir()
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes((FULL / "t10k-images-idx3-ubyte.gz").read_bytes())
        raw = bytearray(gzip.decompress((FULL / "t10k-labels-idx1-ubyte.gz").read_bytes()))
        raw[100] ^= 0x01  # still a valid label, so only the MD5 can tell
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
        with pytest.raises(GenladderError, match=f"^{folder}/t10k-labels-idx1-ubyte.gz: checksum mismatch"):
            load_split("mnist", "test", data_dir=folder)


class TestSources:
    def test_precedence_data_dir_then_cache_then_download(self, tmp_path, cache_dir, server, monkeypatch):
        spec = mini_spec("mnist", (f"{server.url}/m",))
        serve_split(server, "m", "train")
        images, labels = mini("train")
        write_split(tmp_path / "d", "train", idx_bytes(images[:100]), idx_bytes(labels[:100]))
        write_split(cache_dir / "mnist", "train", idx_bytes(images[:200]), idx_bytes(labels[:200]))
        assert len(load_split(spec, "train", data_dir=tmp_path / "d")) == 100
        monkeypatch.setenv("GENLADDER_DATA_DIR", str(tmp_path / "d"))
        assert len(load_split(spec, "train")) == 100
        monkeypatch.delenv("GENLADDER_DATA_DIR")
        assert len(load_split(spec, "train")) == 200
        assert server.hits == []
        for p in (cache_dir / "mnist").iterdir():
            p.unlink()
        assert len(load_split(spec, "train")) == 3000
        assert len(server.hits) == 2

    def test_download_skips_bad_mirrors(self, cache_dir, server):
        serve_split(server, "corrupt", "train", corrupt=True)
        serve_split(server, "good", "train")
        mirrors = (f"{server.url}/down", f"{server.url}/corrupt/", f"{server.url}/good")
        s = load_split(mini_spec("mnist", mirrors), "train")
        assert torch.equal(s.images[:, 0], torch.from_numpy(mini("train")[0].copy()))
        assert [h.split("/")[1] for h in server.hits] == ["down", "corrupt", "good"] * 2
        assert files_in(cache_dir) == {f"{n}.gz" for n in NAMES["train"]}
        load_split(mini_spec("mnist", mirrors), "train")  # now served from the cache
        assert len(server.hits) == 6

    def test_download_served_uncompressed(self, cache_dir, server):
        for name in NAMES["test"]:
            server.routes[f"/raw/{name}.gz"] = gzip.decompress((MINI / f"{name}.gz").read_bytes())
        assert len(load_split(mini_spec("mnist", (f"{server.url}/raw",)), "test")) == 1000
        assert files_in(cache_dir) == set(NAMES["test"])  # stored under the uncompressed names

    def test_all_mirrors_bad(self, cache_dir, server):
        serve_split(server, "corrupt", "test", corrupt=True)
        spec = mini_spec("mnist", (closed_port_url(), f"{server.url}/down", f"{server.url}/corrupt"))
        with pytest.raises(GenladderError) as info:
            load_split(spec, "test")
        text = str(info.value)
        assert "\n" not in text and "t10k-images-idx3-ubyte(.gz) not found" in text
        assert "refused" in text and "HTTP 404" in text and "checksum mismatch" in text
        assert files_in(cache_dir) == set()

    def test_offline_nothing_local(self, cache_dir):
        with pytest.raises(GenladderError) as info:
            load_split("mnist", "train", download=False)
        text = str(info.value)
        assert "\n" not in text and text.startswith("mnist: train-images-idx3-ubyte(.gz) not found in ")
        assert str(cache_dir / "mnist") in text and "download disabled" in text
        assert "--data-dir" in text and "GENLADDER_DATA_DIR" in text and "t10k-labels-idx1-ubyte.gz" in text


class TestFashionSpec:
    def test_real_spec(self):
        spec = DATASETS["fashion-mnist"]
        assert spec.train.images.gz_md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d" and len(spec.mirrors) == 2
        assert [f.name for f in spec.files] == [f.name for f in DATASETS["mnist"].files]

    def test_download_and_gz_checksum(self, cache_dir, server, tmp_path):
        serve_split(server, "good", "train")
        spec = mini_spec("fashion-mnist", (f"{server.url}/down", f"{server.url}/good"), checksum="gz")
        s = load_split(spec, "train")
        assert (s.name, len(s)) == ("fashion-mnist", 3000)
        assert files_in(cache_dir / "fashion-mnist") == {f"{n}.gz" for n in NAMES["train"]}
        # A recompressed copy holds the same pixels, but only the original .gz MD5 is known.
        (tmp_path / "d").mkdir()
        for name in NAMES["train"]:
            raw = gzip.decompress((MINI / f"{name}.gz").read_bytes())
            (tmp_path / "d" / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
        with pytest.raises(GenladderError, match="only the original .gz file can be verified"):
            load_split(spec, "train", data_dir=tmp_path / "d")

    def test_filespec_needs_a_checksum(self):
        with pytest.raises(GenladderError, match="needs raw_md5 or gz_md5"):
            FileSpec("x", 1)


class TestTransforms:
    def test_pad_keeps_pixels(self):
        x = load_split("mnist", "test", data_dir=MINI, limit=16).images
        y = to_32(x)
        assert (y.shape, y.dtype) == ((16, 1, 32, 32), torch.uint8)
        assert torch.equal(y[..., 2:30, 2:30], x)
        assert y.sum() == x.sum()  # so the 2-pixel border is all zero

    def test_resize(self):
        x = load_split("mnist", "test", data_dir=MINI, limit=16).images
        y = to_32(x, method="resize")
        assert (y.shape, y.dtype) == ((16, 1, 32, 32), torch.uint8)
        # Bilinear upsampling scales the ink by the area ratio, up to rounding.
        ratio = y.double().sum() / x.double().sum()
        assert abs(ratio - (32 / 28) ** 2) < 0.02
        flat = torch.full((1, 3, 28, 28), 77, dtype=torch.uint8)
        assert torch.equal(to_32(flat, "resize"), torch.full((1, 3, 32, 32), 77, dtype=torch.uint8))

    def test_to_32_errors(self):
        with pytest.raises(GenladderError, match="unknown to_32 method 'crop'"):
            to_32(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "crop")
        with pytest.raises(GenladderError, match="expects uint8"):
            to_32(torch.zeros(1, 1, 28, 28))
        with pytest.raises(GenladderError, match=r"shape \(N, C, 28, 28\)"):
            to_32(torch.zeros(1, 32, 32, dtype=torch.uint8))

    def test_round_trips_exact(self):
        x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
        u, s = to_unit(x), to_signed(x)
        assert u.dtype == s.dtype == torch.float32
        assert (u.min(), u.max(), s.min(), s.max()) == (0.0, 1.0, -1.0, 1.0)
        assert torch.equal(from_unit(u), x) and torch.equal(from_signed(s), x)

    def test_inverse_clamps_and_rounds(self):
        assert from_unit(torch.tensor([-0.5, 0.4 / 255, 0.6 / 255, 1.7])).tolist() == [0, 0, 1, 255]
        assert from_signed(torch.tensor([-3.0, -1.0, 0.0, 1.0, 9.0])).tolist() == [0, 0, 128, 255, 255]
        with pytest.raises(GenladderError, match="expects uint8"):
            to_signed(torch.zeros(2))
        with pytest.raises(GenladderError, match="floating-point"):
            from_unit(torch.zeros(2, dtype=torch.uint8))
