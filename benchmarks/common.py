"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def markdown_table(rows: Iterable[dict], cols: list[str], cell: Callable[[str, object], str]) -> str:
    """A Markdown table of ``rows`` (dicts) over ``cols``; ``cell(column, value)`` formats each value (missing: '')."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(c, r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
