"""Training on your own images: folders and .npz files, every rung at any channel count and size, and
every user error as one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genladder.cli import main
from genladder.data.files import SPLIT_SEED, own_split, read_own_data
from genladder.errors import GenladderError
from genladder.rungs import build_model
from tests.test_cli import run_cli

CLASSES = ("blue_cols", "red_rows")  # sorted: label 0 = blue columns, label 1 = red rows


def stripes(label: int, index: int, size: int = 16) -> np.ndarray:
    """A (size, size, 3) uint8 image: blue vertical stripes (label 0) or red horizontal ones (label 1).

    Every index up to 160 gives a different image (stripe offset and brightness), as real data would.
    """
    image = np.zeros((size, size, 3), np.uint8)
    offset, level = index % 4, 255 - index // 4
    if label == 0:
        image[:, offset::4, 2] = level
    else:
        image[offset::4, :, 0] = level
    return image


def write_stripes(root: Path, per_class: int) -> Path:
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(stripes(label, i)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory) -> Path:
    """2 classes × 160 RGB 16×16 PNGs, written by the test (enough that 200 steps are only 11 epochs)."""
    return write_stripes(tmp_path_factory.mktemp("own") / "stripes", 160)


@pytest.fixture(scope="module")
def own_runs(rgb_folder, tmp_path_factory) -> dict[str, Path]:
    """A tiny vae and cddpm trained through the CLI on the RGB folder."""
    root = tmp_path_factory.mktemp("own-runs")
    common = ["--data", rgb_folder, "--steps", 4, "--batch-size", 16, "--test-share", 0.25, "--no-progress"]
    runs = {"vae": root / "vae", "cddpm": root / "cddpm"}
    assert main([str(a) for a in ["train", "vae", "--run-dir", runs["vae"], "--width", 8, *common]]) == 0
    assert main([str(a) for a in ["train", "cddpm", "--preset", "small", "--run-dir", runs["cddpm"],
                                  "--widths", "16,16", "--T", 50, *common]]) == 0
    return runs


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


class TestReading:
    def test_folder_with_class_sub_folders(self, rgb_folder):
        data = read_own_data(rgb_folder)
        assert data.images.shape == (320, 3, 16, 16) and data.images.dtype == torch.uint8
        assert data.class_names == CLASSES and data.labels.tolist() == [0] * 160 + [1] * 160
        # The channels are in RGB order and each image carries its class's colour.
        blue, red = data.images[data.labels == 0].float(), data.images[data.labels == 1].float()
        assert blue[:, 2].mean() > 50 and blue[:, 0].max() == 0
        assert red[:, 0].mean() > 50 and red[:, 2].max() == 0
        assert torch.equal(data.images[1], torch.from_numpy(stripes(0, 1)).permute(2, 0, 1))

    def test_unlabelled_folder_grey_and_colour(self, tmp_path):
        grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
        Image.fromarray(grey).save(tmp_path / "a.png")
        Image.fromarray(stripes(1, 0, size=8)).save(tmp_path / "b.bmp")
        Image.fromarray(np.dstack([stripes(0, 0, 8), np.full((8, 8), 255, np.uint8)])).save(tmp_path / "c.png")
        (tmp_path / "notes.txt").write_text("not an image")
        (tmp_path / ".hidden.png").write_bytes(b"skipped")
        data = read_own_data(tmp_path)
        assert data.class_names == () and data.labels.tolist() == [-1, -1, -1]
        assert data.images.shape == (3, 3, 8, 8)  # the grey file joins the colour ones as RGB
        assert all(torch.equal(data.images[0, c], torch.from_numpy(grey)) for c in range(3))

    def test_grey_folder_has_one_channel(self, tmp_path):
        for i in range(2):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / f"{i}.png")
        assert read_own_data(tmp_path).images.shape == (2, 1, 8, 8)

    @pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc"])
    def test_npz_layouts(self, tmp_path, layout):
        images = np.random.default_rng(0).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
        stored = {"nhw": images[:, 0], "nchw": images, "nhwc": images.transpose(0, 2, 3, 1)}[layout]
        data = read_own_data(save_npz(tmp_path / "d.npz", images=stored, labels=np.array([0, 1, 2, 1, 0])))
        assert np.array_equal(data.images.numpy(), images) and data.class_names == ("0", "1", "2")
        assert data.labels.dtype == torch.int64 and data.labels.tolist() == [0, 1, 2, 1, 0]

    def test_split_is_fixed_disjoint_and_complete(self, rgb_folder):
        data = read_own_data(rgb_folder)
        torch.manual_seed(123)  # the split has its own generator: the global seed must not move it
        test, train = own_split(data, "test", 0.25), own_split(data, "train", 0.25)
        assert (len(train), len(test)) == (240, 80) and test.num_classes == 2
        expected = torch.randperm(320, generator=torch.Generator().manual_seed(SPLIT_SEED))
        assert torch.equal(test.images, data.images[expected[:80]])
        assert torch.equal(train.labels, data.labels[expected[80:]])
        assert len(own_split(data, "train", 0.25, limit=10)) == 10


def make_error_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Build one bad input; return the --data path and the text the one-line error must contain."""
    folder = tmp_path / case
    folder.mkdir()

    def png(name: str, size=(16, 16), mode="RGB") -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size).save(path)
        return path

    if case == "missing":
        return folder / "nothing-here", "nothing-here: no such file or folder"
    if case == "not-npz":
        (folder / "table.csv").write_text("1,2,3")
        return folder / "table.csv", "table.csv: expected a folder of images or an .npz file"
    if case == "empty-folder":
        return folder, f"{folder}: the folder is empty"
    if case == "no-images":
        (folder / "readme.txt").write_text("hi")
        return folder, "no images found (looked for .bmp"
    if case == "empty-class":
        png("cats/a.png")
        (folder / "dogs").mkdir()
        return folder, f"{folder / 'dogs'}: class folder holds no images"
    if case == "loose-and-classes":
        png("a.png"), png("cats/b.png")
        return folder, "holds both images (a.png) and sub-folders (cats)"
    if case == "corrupt-image":
        png("a.png")
        (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return folder, f"{folder / 'b.png'}: cannot read the image"
    if case == "truncated-image":
        good = png("a.png", mode="L")
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)).save(good)
        (folder / "b.png").write_bytes(good.read_bytes()[:-40])
        return folder, f"{folder / 'b.png'}: cannot read the image"
    if case == "mixed-sizes":
        png("a.png"), png("b.png", size=(32, 16))
        return folder, f"{folder / 'a.png'} is 16×16 but {folder / 'b.png'} is 32×16"
    if case == "not-square":
        png("a.png", size=(24, 16))
        return folder, "a.png: images are 24×16 (width×height) but only square images are supported"
    if case == "not-divisible-by-8":
        png("a.png", size=(20, 20))
        return folder, ("a.png: images are 20×20 but the side must be divisible by 8 (the networks halve it three "
                        "times); crop or pad them to 16 or 24")
    if case == "16-bit":
        Image.fromarray(np.zeros((16, 16), np.uint16)).save(folder / "deep.png")
        return folder, "deep.png: pixel format I;16"
    if case == "transparent":
        Image.new("RGBA", (16, 16), (255, 0, 0, 128)).save(folder / "glass.png")
        return folder, "glass.png: has transparent pixels"
    images = np.zeros((4, 16, 16), np.uint8)
    npz_cases = {
        "npz-no-images": ({"pictures": images}, "has no 'images' array (it holds pictures)"),
        "npz-float": ({"images": images.astype(np.float32)}, "'images' must be uint8 in [0, 255], got float32"),
        "npz-shape": ({"images": np.zeros((4, 5, 16, 16), np.uint8)}, "got (4, 5, 16, 16)"),
        "npz-empty": ({"images": images[:0]}, "'images' holds no images"),
        "npz-size": ({"images": np.zeros((4, 12, 12), np.uint8)}, "images are 12×12 but the side must be divisible"),
        "npz-label-count": ({"images": images, "labels": np.array([0, 1, 0])}, "'labels' holds 3 entries but"),
        "npz-label-dtype": ({"images": images, "labels": np.array([0.0, 1, 0, 1])}, "1-d array of integers"),
        "npz-label-gap": ({"images": images, "labels": np.array([0, 2, 0, 2])}, "but 1 never occurs"),
        "npz-label-negative": ({"images": images, "labels": np.array([0, -1, 0, 1])}, "must be 0 or more"),
        "npz-pickle": ({"images": np.array([images, "x"], dtype=object)}, "cannot read the .npz file"),
    }
    if case in npz_cases:
        arrays, message = npz_cases[case]
        return save_npz(folder / "data.npz", **arrays), message
    if case == "npz-label-huge":
        labels = np.array([0, 1, 0, 10**12])
        return save_npz(folder / "data.npz", images=images, labels=labels), "go up to 1000000000000"
    if case == "npy-renamed":
        np.save(folder / "data.npy", images)
        (folder / "data.npy").rename(folder / "data.npz")
        return folder / "data.npz", "a single .npy array, not an .npz archive"
    if case == "npz-header-bomb":
        # A 9 TiB 'images' array declared in a header of a few bytes (nothing behind it).
        import io
        import zipfile

        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (9 * 2**20, 1024, 1024)})
        with zipfile.ZipFile(folder / "data.npz", "w") as archive:
            archive.writestr("images.npy", header.getvalue())
        return folder / "data.npz", "bytes of pixels, more than the"
    if case == "dev-null":
        return Path("/dev/null"), "/dev/null: a special file"
    if case == "fifo":
        import os

        os.mkfifo(folder / "data.npz")
        return folder / "data.npz", "data.npz: a special file"
    if case == "class-link-to-root":
        png("cats/a.png")
        (folder / "all").symlink_to(folder)
        return folder, "all: class folder is a link to the data folder"
    if case == "symlink-loop":
        (folder / "loop").symlink_to(folder / "loop")
        return folder / "loop", "loop: a symlink loop"
    if case == "huge-side":
        png("a.png", size=(2048, 2048), mode="L")
        return folder, "a.png: images are 2048×2048; sides up to 1024"
    if case == "npz-corrupt":
        (folder / "data.npz").write_bytes(b"PK\x03\x04 not really a zip")
        return folder / "data.npz", f"{folder / 'data.npz'}: cannot read the .npz file"
    raise AssertionError(case)


ERROR_CASES = ["missing", "not-npz", "empty-folder", "no-images", "empty-class", "loose-and-classes",
               "corrupt-image", "truncated-image", "mixed-sizes", "not-square", "not-divisible-by-8", "16-bit",
               "transparent", "npz-no-images", "npz-float", "npz-shape", "npz-empty", "npz-size",
               "npz-label-count", "npz-label-dtype", "npz-label-gap", "npz-label-negative", "npz-pickle",
               "npz-corrupt", "npz-label-huge", "npy-renamed", "npz-header-bomb", "dev-null", "fifo",
               "class-link-to-root", "huge-side", "symlink-loop"]


class TestErrors:
    @pytest.mark.parametrize("case", ERROR_CASES)
    def test_bad_data_is_one_line_naming_the_file(self, tmp_path, capsys, case):
        path, message = make_error_case(tmp_path, case)
        with pytest.raises(GenladderError) as caught:
            read_own_data(path)
        assert message in str(caught.value) and "\n" not in str(caught.value)
        assert path.name in str(caught.value)  # the file at fault, or the folder when no one file is
        code, _, err = run_cli(capsys, "train", "vae", "--data", path, "--dry-run")
        assert code == 2 and err.count("\n") == 1 and message in err, err

    def test_total_pixel_budget_is_checked_from_headers(self, tmp_path, monkeypatch):
        """Pixels are counted from image and .npy headers, so nothing past the budget is decoded."""
        import genladder.data.files as files

        monkeypatch.setattr(files, "MAX_TOTAL_BYTES", 10_000)
        folder = tmp_path / "pngs"
        folder.mkdir()
        for k in range(4):
            Image.new("RGB", (32, 32)).save(folder / f"{k}.png")  # 3 kB of pixels each
        decoded = set()
        real_load = files.Image.Image.load
        monkeypatch.setattr(files.Image.Image, "load",
                            lambda image: decoded.add(getattr(image, "filename", None)) or real_load(image))
        with pytest.raises(GenladderError, match="more than the 10,000 genladder will load"):
            read_own_data(folder)
        assert sorted(Path(name).name for name in decoded if name) == ["0.png", "1.png", "2.png"], \
            "the fourth image must be refused from its header, before decoding"
        bomb = save_npz(tmp_path / "zeros.npz", images=np.zeros((40, 16, 16), np.uint8))  # compresses to ~nothing
        with pytest.raises(GenladderError, match="more than the 10,000"):
            read_own_data(bomb)

    @pytest.mark.parametrize("kind,message", [("cvae", "cvae is class-conditional but"),
                                              ("cddpm", "has no labels; put the images in one sub-folder"),
                                              ("cflow", "has no labels; put the images in one sub-folder"),
                                              ("classifier", "classifier learns labels but")])
    def test_conditional_rungs_refuse_unlabelled_data(self, tmp_path, capsys, kind, message):
        path = save_npz(tmp_path / "d.npz", images=np.zeros((4, 8, 8), np.uint8))
        code, _, err = run_cli(capsys, "train", kind, "--data", path, "--dry-run")
        assert code == 2 and message in err and err.count("\n") == 1

    def test_one_class_is_not_enough_for_a_conditional_rung(self, tmp_path, capsys):
        path = save_npz(tmp_path / "d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, np.int64))
        code, _, err = run_cli(capsys, "train", "cddpm", "--data", path, "--dry-run")
        assert code == 2 and "has only one class (0)" in err

    @pytest.mark.parametrize("argv,message", [
        (["--data", "mnist", "--test-share", "0.2"], "--test-share applies to your own images"),
        (["--data", "{own}", "--data-dir", "/tmp"], "--data-dir locates the IDX files"),
        (["--data", "{own}", "--resize", "resize"], "--resize applies to the 28×28 IDX datasets"),
        (["--data", "{own}", "--test-share", "1"], "--test-share must be between 0 and 1"),
        (["--data", "{own}", "--test-share", "0.9"], "too few to hold out a test share of 0.9"),
    ])
    def test_flags_that_do_not_fit_the_data(self, tmp_path, capsys, argv, message):
        own = save_npz(tmp_path / "d.npz", images=np.zeros((2, 8, 8), np.uint8))
        argv = [a.format(own=own) for a in argv]
        code, _, err = run_cli(capsys, "train", "vae", *argv, "--dry-run")
        assert code == 2 and message in err and err.count("\n") == 1, err


class TestEveryRung:
    @pytest.mark.parametrize("kind,preset", [("ae", "default"), ("ae", "tutorial"), ("vae", "default"),
                                             ("cvae", "tutorial"), ("ddpm", "small"), ("ddpm", "cpu-fast"),
                                             ("cddpm", "default"), ("cddpm", "tutorial"), ("flow", "small"),
                                             ("cflow", "cpu-fast")])
    @pytest.mark.parametrize("channels,size", [(3, 24), (1, 40)])
    def test_network_fits_the_data(self, tmp_path, capsys, kind, preset, channels, size):
        images = np.zeros((6, channels, size, size), np.uint8)
        path = save_npz(tmp_path / "d.npz", images=images, labels=np.array([0, 1, 2, 0, 1, 2]))
        code, out, err = run_cli(capsys, "train", kind, "--preset", preset, "--data", path, "--dry-run")
        assert code == 0, err
        config = json.loads(out)
        assert config["data"]["channels"] == channels and config["data"]["image_size"] == size
        model = build_model(kind, config["model"]).eval()
        x = torch.rand(2, channels, size, size)
        conditional = kind in ("cvae", "cddpm", "cflow")
        labels = torch.tensor([0, 2]) if conditional else None
        assert config["model"]["num_classes"] == (3 if conditional else 0)
        with torch.no_grad():
            if kind in ("ddpm", "cddpm", "flow", "cflow"):
                output = model(x, torch.tensor([0, 5]), labels)
            else:
                output = model(x, labels) if kind != "ae" else model(x)
        assert output.shape == x.shape


class TestTrainingOnAFolder:
    def test_run_folder_records_the_data(self, own_runs, rgb_folder):
        config = json.loads((own_runs["cddpm"] / "config.json").read_text())
        assert config["data"]["dataset"] == str(rgb_folder.resolve()) and config["data"]["test_share"] == 0.25
        assert config["data"]["class_names"] == list(CLASSES) and config["data"]["images"] == 320
        assert config["model"]["in_channels"] == 3 and config["model"]["image_size"] == 16
        assert config["model"]["num_classes"] == 2
        preview = Image.open(sorted((own_runs["cddpm"] / "samples").glob("*.png"))[-1])
        assert preview.mode == "RGB" and preview.size == (2 * (10 * 18 + 2), 2 * (2 * 18 + 2))  # a row per class

    def test_sample_grids_are_rgb(self, own_runs, tmp_path, capsys):
        out = tmp_path / "grid.png"
        assert run_cli(capsys, "sample", own_runs["cddpm"], "--grid", "--n", 8, "--steps", 4, "--guidance", 1,
                       "--out", out, "--no-progress")[0] == 0
        grid = Image.open(out)
        assert grid.mode == "RGB" and grid.size == (2 * (4 * 18 + 2), 2 * (2 * 18 + 2))  # 2 classes × 4
        assert run_cli(capsys, "sample", own_runs["vae"], "--n", 6, "--out", tmp_path / "s.npz")[0] == 0
        assert np.load(tmp_path / "s.npz")["images"].shape == (6, 3, 16, 16)

    def test_reconstruct_and_interpolate_use_the_held_out_images(self, own_runs, tmp_path, capsys):
        assert run_cli(capsys, "reconstruct", own_runs["vae"], "--n", 8, "--out", tmp_path / "r.png")[0] == 0
        assert Image.open(tmp_path / "r.png").size == (2 * (8 * 18 + 2), 2 * (2 * 18 + 2))
        assert run_cli(capsys, "interpolate", own_runs["vae"], "--pairs", 2, "--out", tmp_path / "i.png")[0] == 0
        code, _, err = run_cli(capsys, "reconstruct", own_runs["vae"], "--n", 100, "--out", tmp_path / "x.png")
        assert code == 2 and "asked for 100 test images but the test set holds 80" in err

    def test_resume_and_changed_data(self, rgb_folder, tmp_path, capsys):
        folder = write_stripes(tmp_path / "copy", 8)
        run = tmp_path / "run"
        argv = ["train", "ae", "--data", folder, "--width", 8, "--steps", 2, "--batch-size", 4, "--run-dir", run,
                "--no-progress"]
        assert run_cli(capsys, *argv)[0] == 0
        assert run_cli(capsys, "train", "--resume", run, "--steps", 3, "--no-progress")[0] == 0
        Image.fromarray(stripes(0, 0)).save(folder / CLASSES[0] / "extra.png")
        code, _, err = run_cli(capsys, "train", "--resume", run, "--steps", 4, "--no-progress")
        assert code == 2 and "changed since the run started: images was 16, now 17" in err

    def test_classifier_and_evaluation_on_own_data(self, own_runs, rgb_folder, tmp_path, capsys):
        classifier = tmp_path / "classifier"
        assert run_cli(capsys, "train", "classifier", "--data", rgb_folder, "--steps", 10, "--batch-size", 16,
                       "--test-share", 0.25, "--run-dir", classifier, "--no-progress")[0] == 0
        model = json.loads((classifier / "config.json").read_text())["model"]
        assert (model["in_channels"], model["image_size"], model["num_classes"]) == (3, 16, 2)
        code, out, err = run_cli(capsys, "evaluate", own_runs["vae"], "--classifier", classifier, "--n", 20,
                                 "--iwae-k", 2, "--iwae-images", 4, "--memorisation-samples", 10, "--json")
        assert code == 0, err
        result = json.loads(out)
        assert set(result["judges"]) == {"primary"}  # an own classifier and no second one: one judge
        samples = result["judges"]["primary"]["samples"]
        assert samples["classifier_fid"] > 0 and len(samples["class_histogram"]["shares"]) == 2

    def test_named_datasets_still_work(self, capsys):
        for argv in (["--data", "fashion-mnist"], ["--dataset", "fashion-mnist"]):
            code, out, _ = run_cli(capsys, "train", "cvae", *argv, "--dry-run")
            config = json.loads(out)
            assert code == 0 and config["data"]["dataset"] == "fashion-mnist" and config["model"]["image_size"] == 32

    def test_cvae_learns_the_colour_of_each_class(self, rgb_folder, tmp_path, capsys):
        """200 steps suffice for a CVAE to draw blue columns for label 0 and red rows for label 1.

        Catches labels attached to the wrong images, scrambled channels, or a decoder that ignores the label.
        """
        run = tmp_path / "cvae"
        assert run_cli(capsys, "train", "cvae", "--data", rgb_folder, "--steps", 200, "--batch-size", 16, "--width",
                       16, "--latent-dim", 4, "--lr", 1e-2, "--test-share", 0.1, "--run-dir", run,
                       "--no-progress")[0] == 0
        assert run_cli(capsys, "sample", run, "--grid", "--n", 20, "--out", tmp_path / "s.npz")[0] == 0
        samples = np.load(tmp_path / "s.npz")
        images, labels = (samples["images"] + 1) / 2, samples["labels"]
        mean = {k: images[labels == k].mean(axis=(0, 2, 3)) for k in (0, 1)}  # per-channel mean, (3,)
        # The data: a quarter of the pixels bright blue (label 0) or bright red (label 1), the rest black.
        assert mean[0][2] > 0.15 and mean[0][0] < 0.05, mean
        assert mean[1][0] > 0.15 and mean[1][2] < 0.05, mean
