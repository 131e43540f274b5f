"""dsetool: quantize a DNN, run it bit-exactly on a systolic-array model, inject faults, cost protections in
silicon, and recommend a design point."""

import os

# Huge pages for torch's large CPU tensors (2 MB and up). The engine writes fresh tensors of tens of MB per
# batch (a layer's accumulators, its codes), and with 4 kB pages the kernel zeroes each one on first touch:
# filling a new 100 MB tensor took 42.7 ms on one core here, 11.1 ms with huge pages
# (`benchmarks/huge_pages.py`). Torch's allocator reads the variable at its first large allocation; a value
# the user set wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
