"""The docs: every code link names a function defined at its anchor, every image and page link resolves,
and ``scripts/docs_figures.py`` draws every figure the pages show (quick mode, on the MNIST extract)."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from genladder.errors import GenladderError

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
# the learning path
LEARNING = ("README", "ae", "vae", "cvae", "ddpm", "guided-ddpm", "samplers", "flow-matching", "ladder")
REFERENCE = ("usage", "results", "performance", "latent-diffusion", "scaling", "reliability", "tutorial-changes",
             "development", "architecture")
PAGES = LEARNING + REFERENCE
# Pictures of the reference pages that scripts/docs_figures.py does not draw, with what made them.
NOT_REDRAWN = {
    "web-demo.png": "a screenshot of 'genladder serve'",
    "cpu-fast-guidance-curve.png": "genladder guidance-curve on the full-budget cpu-fast run (docs/performance.md)",
    "cpu-fast-grid-w0.png": "genladder sample --grid --guidance 0 on that run",
    "cpu-fast-grid-w05.png": "genladder sample --grid --guidance 0.5 on that run",
    "cpu-fast-grid-w1.png": "genladder sample --grid --guidance 1 on that run",
    "cpu-fast-ddim-eta1-grid-w0.png": "genladder sample --grid --sampler ddim --eta 1 --steps 50 (cpu-fast-v)",
    "cpu-fast-sde-grid-w0.png": "genladder sample --grid, the default dpmpp-sde 20 steps (cpu-fast-v)",
    "cpu-fast-sde-grid-w025.png": "genladder sample --grid --guidance 0.25, dpmpp-sde 20 steps (cpu-fast-v)",
    "mnist-test-grid.png": "the first ten MNIST test digits of each class (docs/performance.md says how)",
    "ablation-previews.png": "the last training previews of three ablation runs (docs/performance.md)",
    "cpu-fast-training-curve.png": "benchmarks/time_to_quality.py on the full-budget cpu-fast run",
    "cflow-grid-w05.png": "genladder sample --grid --guidance 0.5 --sampler euler --steps 10 on the cpu-fast cflow",
    "latent-grid-w1.png": "genladder sample --grid --guidance 1 --steps 5 on the cpu-fast latent run",
    "reflow-vs-teacher-1-2-steps.png": "genladder sample --grid --sampler euler --steps 1|2 on cflow and its reflow",
    "latent-3440-grid-w1.png": "genladder sample --grid --guidance 1 --steps 5 on the 3,440-step latent run",
    "latent-quality-grid-w1.png": "genladder sample --grid --guidance 1 --steps 5 on the latent quality run",
    "latent-quality-curve.png": "benchmarks/time_to_quality.py on the latent quality run",
    "nll-curve-60.png": "benchmarks/nll_curve.py on the 60-epoch binarised VAE run",
    "latent-quality16-curve.png": "benchmarks/time_to_quality.py on the 16× latent quality run",
    "latent-quality16-grid-w1.png": "genladder sample --grid --guidance 1 --steps 5 on the 16× latent quality run",
    "vae-spatial-reconstructions.png": "genladder reconstruct --n 16 on the 4×8×8 spatial VAE",
    "ddpm-cpu-fast-samples.png": "genladder sample --n 64 on the cpu-fast unconditional ddpm run",
    "nll-curve.png": "benchmarks/nll_curve.py on the two binarised VAE runs (docs/results.md)",
    "vae-vampprior-samples.png": "the epoch-5 training previews of two binarised VAEs, N(0, I) and VampPrior",
    "cpu-fast-x0-grid-w0.png": "genladder sample --grid --guidance 0 on the cpu-fast x0-prediction run",
    "latent-reflow-vs-teacher.png": "genladder sample --grid --sampler euler on the latent teacher and its reflow",
    "nll-curve-iwae.png": "benchmarks/nll_curve.py on the VAE fine-tuned with the IWAE bound (docs/results.md)",
    "default-preset-curve.png": "benchmarks/time_to_quality.py on the default cddpm preset's first 115,200 images",
    "default-preset-grid-w05.png": "genladder sample --grid --guidance 0.5 on that default-preset run",
}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


doc_links = _script("update_doc_links")
docs_figures = _script("docs_figures")


def _images_shown(documents) -> set[str]:
    """File names of the docs/images pictures that the given Markdown files show."""
    return {Path(link.target).name for document in documents for link in doc_links.links(document)
            if link.image and "docs/images" in str(link.path)}


class TestLinks:
    def test_every_page_exists_and_the_readme_links_the_docs(self):
        assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(PAGES)
        readme = (REPO / "README.md").read_text()
        index = (DOCS / "README.md").read_text()
        for page in PAGES:
            assert f"(docs/{page}.md)" in readme, page
            assert page == "README" or f"({page}.md)" in index, f"docs/README.md does not link {page}.md"

    def test_the_readme_stays_short(self):
        # A newcomer's page: the quick path, install, one block of commands, the Python API and links.
        assert (REPO / "README.md").stat().st_size < 12_000

    def test_no_broken_or_stale_link(self):
        problems = doc_links.problems()
        assert not problems, "\n".join(problems)

    @pytest.mark.parametrize("page", [p for p in LEARNING if p not in ("README", "ladder")])
    def test_every_rung_page_links_code_and_shows_figures(self, page):
        found = doc_links.links(DOCS / f"{page}.md")
        assert sum(link.is_code for link in found) >= 5
        assert sum(link.image for link in found) >= 2

    def test_anchor_is_the_def_line(self):
        # latent_map_command is decorated (@torch.no_grad()): the anchor skips the decorator.
        link = doc_links.Link(DOCS / "x.md", 1, "`latent_map_command`", "../src/genladder/figures.py#L1", False)
        line = doc_links.definition_line(link)
        text = (REPO / "src" / "genladder" / "figures.py").read_text().splitlines()
        assert text[line - 1].startswith("def latent_map_command(") and text[line - 2].startswith("@torch.no_grad")

    def test_stale_broken_and_missing_links_are_reported_and_anchors_refreshed(self, tmp_path):
        (tmp_path / "src").symlink_to(REPO / "src")
        (tmp_path / "docs").mkdir()
        (tmp_path / "README.md").write_text("")
        page = tmp_path / "docs" / "page.md"
        page.write_text(
            "[`gaussian_kl`](../src/genladder/objectives.py#L3) and [`VAE.reparameterize`]"
            "(../src/genladder/models/autoencoders.py#L1)\n"
            "[`no_such_function`](../src/genladder/objectives.py#L1)\n"
            "![missing](images/none.png) [gone](other.md) [bad](../README.md#nope) [good](#a-section)\n"
            "## A section\n"
            "```\n[`not_a_link`](../src/genladder/nowhere.py#L1)\n```\n"
        )
        before = doc_links.problems(tmp_path)
        assert len(before) == 6 and sum("update_doc_links" in p for p in before) == 2
        assert any("has no 'no_such_function'" in p for p in before)
        assert any("images/none.png does not exist" in p for p in before)
        assert any("README.md has no heading #nope" in p for p in before)
        assert doc_links.update(tmp_path) == 2
        after = doc_links.problems(tmp_path)
        assert len(after) == 4 and not any("update_doc_links" in p for p in after)
        from genladder.objectives import gaussian_kl

        assert f"objectives.py#L{inspect.getsourcelines(gaussian_kl)[1]})" in page.read_text()


class TestFigures:
    def test_every_image_the_pages_show_is_made_by_the_script(self):
        made = {f"{figure.name}.png" for figure in docs_figures.figures(quick=False)}
        committed = {path.name for path in (DOCS / "images").glob("*.png")}
        assert _images_shown([DOCS / f"{page}.md" for page in LEARNING]) == made
        assert made <= committed
        # The reference pages show the script's pictures too, and a few made otherwise (listed, with their source).
        others = _images_shown([DOCS / f"{page}.md" for page in REFERENCE]) - made
        assert others == set(NOT_REDRAWN) and others <= committed

    def test_quick_mode_needs_its_own_folder(self):
        with pytest.raises(GenladderError, match="--out"):
            docs_figures.run(["--recipe", "quick"])

    def test_dry_run_prints_and_makes_nothing(self, tmp_path, capsys):
        paths = docs_figures.run(["--dry-run", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
        out = capsys.readouterr().out
        assert len(paths) == len(docs_figures.figures(quick=False)) and not (tmp_path / "runs").exists()
        assert out.count("genladder train ") == 6 and "genladder latent-map" in out
        assert not (tmp_path / "out").exists()

    def test_quick_mode_draws_every_figure_and_then_reuses_the_runs(self, tmp_path, mini_mnist, capsys):
        args = ["--recipe", "quick", "--out", str(tmp_path / "images"), "--runs", str(tmp_path / "runs"),
                "--data-dir", str(mini_mnist)]
        paths = docs_figures.run(args)
        assert sorted(p.name for p in paths) == sorted(f"{f.name}.png" for f in docs_figures.figures(quick=True))
        for path in paths:
            with Image.open(path) as image:
                image.verify()
        capsys.readouterr()
        docs_figures.run([*args, "--only", "cvae-grid,noising-linear-100"])
        out = capsys.readouterr().out
        assert "reusing" in out and "genladder train" not in out
        assert re.search(r"docs-figures: 2 figures in \d+ s", out)
