"""Keep the docs' links to the code exact: ``python scripts/update_doc_links.py`` (``--check`` only reports).

A code link in ``docs/*.md`` (or the top-level README) names a function or class and points at the
line that defines it::

    [`NoiseSchedule.q_sample`](../src/genladder/diffusion/schedule.py#L105)

The link text, without its backticks and a trailing ``()``, is the qualified name inside the module
that the path names. The symbol is resolved by import, so a renamed or deleted function is an error;
the ``#L`` anchor must be the line of its ``def``/``class`` (decorators skipped). Line numbers move
whenever code above them changes; this script rewrites every anchor from the symbol names, and
``tests/test_docs.py`` fails, naming this script, when one is stale.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_ROOT = REPO / "src"
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")  # ![alt](target) or [text](target)
_SYMBOL = re.compile(r"`?([A-Za-z_][\w.]*?)(?:\(\))?`?")  # `Name.attr` or `name()`


def documents(repo: Path = REPO) -> list[Path]:
    """The Markdown files whose links are checked: docs/*.md and the top-level README."""
    return sorted((repo / "docs").glob("*.md")) + [repo / "README.md"]


@dataclass(frozen=True)
class Link:
    """One Markdown link of a document: ``[text](target)``; ``image`` for ``![alt](target)``."""

    document: Path
    line: int  # 1-based line in the document
    text: str
    target: str
    image: bool

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO) if self.document.is_relative_to(REPO) else self.document}:{self.line}"

    @property
    def path(self) -> Path | None:
        """The local file the target names (fragment dropped; the document itself for "#…"), None for a web link."""
        if re.match(r"[a-z][a-z0-9+.-]*:", self.target):
            return None
        if self.target.startswith("#"):
            return self.document.resolve()
        return (self.document.parent / self.target.split("#")[0]).resolve()

    @property
    def is_code(self) -> bool:
        """A link to a Python file under src/."""
        path = self.path
        return path is not None and path.suffix == ".py" and path.is_relative_to(SOURCE_ROOT.resolve())


def links(document: Path) -> list[Link]:
    """Every Markdown link of ``document``, outside fenced code blocks."""
    found, fenced = [], False
    for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            found += [Link(document, number, m.group(2), m.group(3), bool(m.group(1))) for m in LINK.finditer(line)]
    return found


def anchors(document: Path) -> set[str]:
    """The fragment ids a code host gives the headings of ``document`` (GitHub's rule), outside code blocks."""
    found, seen, fenced = set(), {}, False
    for line in document.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link counts by its text
            slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def module_name(path: Path) -> str:
    """src/genladder/diffusion/schedule.py -> genladder.diffusion.schedule (a package for __init__.py)."""
    parts = list(path.resolve().relative_to(SOURCE_ROOT.resolve()).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def definition_line(link: Link) -> int:
    """The line of the ``def``/``class`` that a code link names; ValueError saying what is wrong."""
    match = _SYMBOL.fullmatch(link.text.strip())
    if not match:
        raise ValueError(f"{link.where}: the text of a code link must name the symbol, e.g. [`module_function`], "
                         f"got [{link.text}]")
    path, name = link.path, match.group(1)
    if not path.exists():
        raise ValueError(f"{link.where}: {link.target} names a file that does not exist")
    module = importlib.import_module(module_name(path))
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{link.where}: {module.__name__} has no {name!r} (renamed or removed?)")
        obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
    obj = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)  # property, class/staticmethod
    obj = inspect.unwrap(obj)
    source = inspect.getsourcefile(obj)
    if source is None or Path(source).resolve() != path:
        raise ValueError(f"{link.where}: {name} is defined in {source}, not in {link.target.split('#')[0]}")
    lines, start = inspect.getsourcelines(obj)
    for offset, text in enumerate(lines):
        if re.match(r"\s*(async\s+def|def|class)\s", text):
            return start + offset
    return start


def anchored(link: Link) -> str:
    """The link's target with the anchor of its symbol's current definition line."""
    return f"{link.target.split('#')[0]}#L{definition_line(link)}"


def problems(repo: Path = REPO) -> list[str]:
    """Every broken or stale link of the docs, one line each (empty when all is well)."""
    found = []
    for document in documents(repo):
        for link in links(document):
            path = link.path
            if path is None:
                continue
            fragment = link.target.partition("#")[2]
            if not path.exists():
                kind = "image" if link.image else "link"
                found.append(f"{link.where}: {kind} target {link.target} does not exist")
            elif path.suffix == ".md" and fragment and fragment not in anchors(path):
                found.append(f"{link.where}: {path.name} has no heading #{fragment}")
            elif link.is_code:
                try:
                    if link.target != anchored(link):
                        found.append(f"{link.where}: [{link.text}] points at {link.target}, the definition is at "
                                     f"{anchored(link)}; run 'python scripts/update_doc_links.py'")
                except ValueError as error:
                    found.append(str(error))
    return found


def update(repo: Path = REPO) -> int:
    """Rewrite every code link's line anchor in place; returns how many changed."""
    changed = 0
    for document in documents(repo):
        text = document.read_text(encoding="utf-8")
        lines = text.split("\n")
        for link in links(document):
            if link.is_code and link.path.exists():
                try:
                    new = anchored(link)
                except ValueError:
                    continue  # a broken link: reported by problems(), nothing to rewrite
                if new != link.target:
                    lines[link.line - 1] = lines[link.line - 1].replace(f"]({link.target})", f"]({new})")
                    changed += 1
        new_text = "\n".join(lines)
        if new_text != text:
            document.write_text(new_text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report broken or stale links (exit 1 if any)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(SOURCE_ROOT))  # resolve symbols in this checkout's code
    if not args.check:
        print(f"update_doc_links: {update()} anchors rewritten")
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
