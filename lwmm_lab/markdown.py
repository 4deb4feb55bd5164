"""Markdown tables, as the README quotes them (findings, the zoo's quality and regime bars)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()
) -> list[str]:
    """A Markdown table's lines; columns at the indices in ``right`` are right-aligned
    (numbers), and a ``|`` inside a cell becomes ``/``."""
    rule = "".join("---:|" if k in right else "---|" for k in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", "|" + rule]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return lines
