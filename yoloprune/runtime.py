"""The process's runtime for the command line and the benchmarks: offline, with the font Ultralytics looks for."""

from __future__ import annotations

import os
from pathlib import Path


def offline_runtime() -> None:
    """The command line never reaches the network: Ultralytics' hub checks off, and the font its dataset check
    looks for (``Arial.ttf``, fetched from GitHub when missing) found locally. Matplotlib's bundled DejaVu Sans is
    offered under that name, through a link in yoloprune's cache folder, to this process's font list only."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        import matplotlib
        from matplotlib import font_manager

        if any("Arial.ttf" in f.fname for f in font_manager.fontManager.ttflist):
            return
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yoloprune" / "fonts"
        link = cache / "Arial.ttf"
        if not link.exists():
            cache.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
        font_manager.fontManager.addfont(str(link))
    except (OSError, ImportError, RuntimeError):
        pass  # without it, Ultralytics asks GitHub for the font and goes on when that fails
