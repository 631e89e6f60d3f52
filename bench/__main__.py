"""Entry point of `make bench`: runs every benchmark, or the one named by BENCH."""

from __future__ import annotations

import os
import sys


def main() -> int:
    selected = os.environ.get("BENCH", "").strip()
    print(f"no benchmarks registered yet (BENCH={selected or 'all'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
