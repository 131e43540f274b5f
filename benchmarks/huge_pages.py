"""Print how long filling a fresh 100 MB tensor takes with torch's huge pages off and on.

Run: `.venv/bin/python benchmarks/huge_pages.py` (a few seconds). Each setting runs in its own process
(torch reads `THP_MEM_ALLOC_ENABLE` at its first large allocation), one thread, median of 20 fills of a
tensor allocated anew each time: what the engine pays per batch for its fresh accumulators and codes.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

SIZE = 100 * 2**20   # bytes
FILLS = 20


def fill_ms() -> float:
    """Return the median milliseconds to allocate and fill a fresh SIZE-byte float64 tensor."""
    import torch

    torch.set_num_threads(1)
    times = []
    for _ in range(FILLS):
        began = time.perf_counter()
        tensor = torch.empty(SIZE // 8, dtype=torch.float64)
        tensor.fill_(1.0)
        times.append(time.perf_counter() - began)
        del tensor
    return statistics.median(times) * 1e3


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(f"{fill_ms():.1f}")
        return
    for setting in ("0", "1"):
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": setting}
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        print(f"THP_MEM_ALLOC_ENABLE={setting}: fresh 100 MB tensor filled in {out} ms (median of {FILLS})")


if __name__ == "__main__":
    main()
