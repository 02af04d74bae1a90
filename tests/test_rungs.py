"""The rung table: the one place that knows the rungs by name, and capabilities that match the networks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from genladder.errors import GenladderError
from genladder.rungs import MODEL_KINDS, RUNGS, build_model, kinds, rung

SRC = Path(__file__).resolve().parents[1] / "src" / "genladder"
NAMES = "|".join(MODEL_KINDS)
# a kind compared with a rung's name, or a hand-written tuple of rung names
KIND_COMPARISON = re.compile(rf"""kind\W{{0,3}}\s*(==|!=|\bin\b|\bnot in\b)\s*\(?["']({NAMES})["']""")
NAME_TUPLE = re.compile(rf"""\(\s*["']({NAMES})["']\s*,\s*["']({NAMES})["']""")
# The table itself, and the autoencoder network family's own config (its "kind" chooses among its three
# variants inside models/, below the rung level).
ALLOWED = {SRC / "rungs.py", SRC / "models" / "autoencoders.py"}


def test_no_kind_name_comparison_outside_the_table():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if KIND_COMPARISON.search(line) or NAME_TUPLE.search(line):
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not found, "ask the rung table (genladder.rungs) instead:\n" + "\n".join(found)


def test_the_grep_catches_what_it_names():
    # the two patterns above, on lines of the kind the redesign removed
    assert KIND_COMPARISON.search('if run.kind == "cddpm":') and KIND_COMPARISON.search('kind in ("vae", "cvae")')
    assert NAME_TUPLE.search('AUTOENCODERS = ("ae", "vae", "cvae")')
    assert not KIND_COMPARISON.search('if self.kind == "linear":')


class TestCapabilities:
    def test_queries(self):
        assert kinds(codes=True) == ("ae", "vae", "cvae") and kinds(diffusion=True) == ("ddpm", "cddpm")
        assert kinds(flow=True) == ("flow", "cflow") and kinds(iterative=True)[:4] == ("ddpm", "cddpm", "flow", "cflow")
        assert kinds(guided=True) == ("cddpm", "cflow", "latent") and kinds(generative=False) == ("classifier",)
        assert rung("cflow").unconditional_twin == "flow" and rung("flow").samples and not rung("flow").codes
        assert kinds(variational=True, conditional=True) == ("cvae",)
        assert rung("cvae").unconditional_twin == "vae" and rung("ddpm").unconditional_twin is None

    def test_unknown_kind(self):
        with pytest.raises(GenladderError, match="unknown model 'gan'; choose one of ae, vae"):
            rung("gan")

    @pytest.mark.parametrize("name", [n for n in RUNGS if not rung(n).latent])  # latent: tests/test_latent.py
    def test_flags_match_the_network(self, name):
        from genladder.models import AutoencoderConfig, ClassifierConfig
        from genladder.models.unet import UNetConfig

        spec = rung(name)
        if spec.family == "autoencoder":
            config = AutoencoderConfig.preset(name, "default", latent_dim=4 if name != "ae" else None, width=8)
        elif spec.iterative:
            config = UNetConfig(widths=(8, 16), attention_resolutions=(), image_size=8,
                                num_classes=3 if spec.conditional else 0)
        else:
            config = ClassifierConfig()
        model = build_model(name, config.to_dict())
        assert hasattr(model, "encode") == spec.codes and hasattr(model, "decode") == spec.codes
        if spec.family == "autoencoder":
            assert bool(model.num_classes) == spec.conditional
        if spec.iterative:
            assert bool(model.config.num_classes) == spec.conditional


def _import_graph(src: Path) -> dict[str, set[str]]:
    """genladder module -> the genladder modules it imports, at module level or inside functions."""
    import ast

    def name(path: Path) -> str:
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(path): path for path in src.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genladder"):
                found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[module] = (found & set(modules)) - {module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_circle():
    assert _cycle(_import_graph(SRC)) is None, " -> ".join(_cycle(_import_graph(SRC)) or [])
    # the search finds the circle the serve modules had (serve imported serve_page inside a function)
    assert _cycle({"serve": {"serve_page"}, "serve_page": {"serve", "figures"}, "figures": set()}) in (
        ["serve", "serve_page", "serve"], ["serve_page", "serve", "serve_page"])
