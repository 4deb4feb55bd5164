"""The README points at what is there: its links, the files it names, and its map of the
package, which must list every module (a moved or added module left out of it is caught)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _repository_map() -> set[str]:
    """The files the README's Repository section lists under ``lwmm_lab/``, as paths."""
    section = README.split("## Repository", 1)[1]
    block = section.split("```", 2)[1]
    listed, folders = set(), {}
    for line in block.splitlines()[1:]:
        name = line.strip().split(" ", 1)[0]
        if not name:
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        parent = folders.get(depth - 1, "")
        if name.endswith("/"):
            folders = {d: f for d, f in folders.items() if d < depth}
            folders[depth] = parent + name
        elif parent.startswith("lwmm_lab/"):
            listed.add(parent + name)
    return listed


def test_every_link_in_the_readme_leads_somewhere():
    headings = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", README, re.M)}
    anchors = re.findall(r"\]\(#([^)]+)\)", README)
    assert anchors, "the README links its sections"
    assert sorted(set(anchors) - headings) == []
    files = re.findall(r"\]\((?!#|https?:)([^)]+)\)", README)
    assert [f for f in files if not (ROOT / f).exists()] == []


def test_every_file_the_readme_names_is_there():
    named = re.findall(
        r"(?<![\w/.])((?:lwmm_lab|benchmarks|notebooks|tests|\.ci)/[\w./-]*\w)", README
    )
    assert len(named) > 10
    assert sorted({p for p in named if not (ROOT / p).exists()}) == []


def test_the_repository_map_lists_every_module():
    modules = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "lwmm_lab").rglob("*.py")
        if p.name not in ("__init__.py", "_version.py")
    }
    listed = _repository_map()
    assert sorted(modules - listed) == [], "modules the README's map leaves out"
    assert sorted(listed - modules) == [], "listed, not there"
