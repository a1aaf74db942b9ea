"""The benchmark scripts, one module each, with their shared harness (``benchmarks/harness.py``).

Run from the repository root: ``python -m benchmarks.<name> [args]`` for one script, ``python -m benchmarks list``
for what there is, ``python -m benchmarks all`` to regenerate every ``.md`` here, ``python -m benchmarks md`` to
re-write them from their saved rows.
"""

from yoloprune.runtime import offline_runtime

offline_runtime()  # before any script imports Ultralytics: no hub checks, no font download

from yoloprune.log import to_console  # noqa: E402

to_console()  # the library's progress lines, as the command line shows them
