"""First-fit allocation of the accelerator's activation buffer: tensors take words when made and give
them back after their last reader (`dsetool.machine.compiler` decides when)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Buffer:
    """First-fit allocation of tensors in the activation buffer, freed after their last reader."""

    free: list[tuple[int, int]] = field(default_factory=lambda: [(0, 1 << 40)])
    high: int = 0

    def take(self, words: int) -> int:
        """Return the first address with `words` free words after it, now taken."""
        for i, (start, size) in enumerate(self.free):
            if size >= words:
                self.free[i] = (start + words, size - words)
                self.high = max(self.high, start + words)
                return start
        raise AssertionError("the free list ends in an unbounded region")

    def give(self, start: int, words: int) -> None:
        """Free `words` words from `start`, merging them with free neighbours."""
        spans = sorted([*self.free, (start, words)])
        merged = [spans[0]]
        for begin, size in spans[1:]:
            last_begin, last_size = merged[-1]
            if last_begin + last_size == begin:
                merged[-1] = (last_begin, last_size + size)
            else:
                merged.append((begin, size))
        self.free = merged
