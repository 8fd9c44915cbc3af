"""What ``import asgi_refresh`` costs a process, against ``import anyio`` (which it needs).

Each import runs in a fresh interpreter, the two alternating, and the interpreter's
own start (``python -c pass``) is subtracted from both; the medians are printed.
What an app that uses no source, backend or config file pays: those load on first use.

    python benchmarks/import_cost.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from _common import Row, print_rows

# As an installed package imports: from bytecode (pip compiles wheels on install), not
# from source, even where the environment says not to write bytecode.
_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def _seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=_ENV)
    return time.perf_counter() - started


async def measure(rounds: int = 15) -> list[Row]:
    """Median import times, in ms, of asgi_refresh and of anyio alone, the bare interpreter subtracted."""
    bare, ours, anyio_alone = [], [], []
    _seconds("import asgi_refresh")  # writes the bytecode the measured runs read
    for _ in range(rounds):
        bare.append(_seconds("pass"))
        ours.append(_seconds("import asgi_refresh"))
        anyio_alone.append(_seconds("import anyio"))
    start = statistics.median(bare)
    mine = (statistics.median(ours) - start) * 1000
    theirs = (statistics.median(anyio_alone) - start) * 1000
    return [
        Row(
            "import asgi_refresh / import anyio (target <= 40 ms)",
            f"{mine:.1f} ms",
            f"{theirs:.1f} ms",
            mine / theirs,
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print_rows(asyncio.run(measure(args.rounds)))
