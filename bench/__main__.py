"""Entry point of `make bench`: runs every benchmark, or the one named by BENCH.

Each prints one JSON line on stdout (SPEC §8); progress and errors go to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any, cast

from bench.common import bench_scale, print_line, progress

# Benchmark id → module; each module has `run(scale: float) -> dict` returning the result line.
BENCHMARKS: dict[str, str] = {
    "SIM": "bench.bench_sim",
    "B1": "bench.bench_b1",
    "B2R": "bench.bench_b2_reads",
    "B2W": "bench.bench_b2_writes",
    "B3": "bench.bench_b3",
    "B4": "bench.bench_b4",
    "B5": "bench.bench_b5",
}

Runner = Callable[[float], dict[str, Any]]


def load(module_name: str) -> Runner:
    # Imported on demand so one benchmark's dependencies never slow down or break another.
    module = importlib.import_module(module_name)
    return cast(Runner, module.run)


def main(environ: Mapping[str, str] = os.environ) -> int:
    selected = environ.get("BENCH", "").strip()
    try:
        scale = bench_scale(environ)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if selected:
        wanted = [name for name in BENCHMARKS if name.casefold() == selected.casefold()]
        if not wanted:
            print(
                f"bench: unknown benchmark {selected!r}; known: {', '.join(BENCHMARKS)}",
                file=sys.stderr,
            )
            return 2
    else:
        wanted = list(BENCHMARKS)
    failed = []
    for name in wanted:
        progress(f"{name}: running at scale {scale:g}")
        try:
            print_line(load(BENCHMARKS[name])(scale))
        except Exception:  # one broken benchmark must not hide the others' results
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
