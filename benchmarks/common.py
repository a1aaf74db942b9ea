"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
from pathlib import Path

from yoloprune.atomic import atomic_write_text


class WorkFolder:
    """A benchmark's resumable work folder: finished rows in ``rows.json``, their models in ``models/``. A row
    counts as done only with its model there, so a killed run redoes the point it was in."""

    def __init__(self, work: Path) -> None:
        self.work = work
        (work / "models").mkdir(parents=True, exist_ok=True)
        self.rows_path = work / "rows.json"
        self.rows = json.loads(self.rows_path.read_text()) if self.rows_path.exists() else {}

    def path(self, key: str) -> Path:
        return self.work / "models" / f"{key}.pt"

    def done(self, key: str) -> bool:
        return key in self.rows and self.path(key).exists()

    def save(self) -> None:
        atomic_write_text(self.rows_path, json.dumps(self.rows, indent=1))
