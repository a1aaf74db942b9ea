"""What the workflows print and write about their rows: one Markdown table writer and one progress line."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from yoloprune.log import say


def markdown_table(rows: Iterable[dict], cols: list[str], cell: Callable[[str, object], str]) -> str:
    """A Markdown table of ``rows`` (dicts) over ``cols``; ``cell(column, value)`` formats each value (missing: '')."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(c, r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


class Progress:
    """One line per finished job on stderr: a bar, done/total, what finished, elapsed and estimated time left."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        left = elapsed / self.done * (self.total - self.done)
        say(f"{bar(self.done, self.total)} {self.done}/{self.total} {what}  elapsed {elapsed:.0f}s, ~{left:.0f}s left", err=True)


def bar(done: int, total: int) -> str:
    """``[#####               ]``: twenty cells, filled in proportion."""
    return f"[{'#' * round(20 * done / max(total, 1)):<20}]"


__all__ = ["Progress", "bar", "markdown_table"]
