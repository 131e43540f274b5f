"""Channel-wise protections from [Ozen] §8.4: median feature selection and anomalous feature suppression.

Both act on a requantized tensor of integer codes (float32/float64 holding exact integers) laid out
(B, C, H, W) for a conv output or (B, C) for a linear one, along the channel axis (dim 1) at every image
and spatial position; a linear layer's features are its channels. Along channels, a fault that corrupts
one weight, and so a whole output channel, puts at most one wrong code in any window or neighbour pair.

- `MedianFilter` (eq 8.3) replaces each code by the median of its channel window, w = 3 or 5, stride 1.
  Channels go through the array in chunks of its width and each chunk is zero-padded on its own, so no
  value crosses a chunk boundary.
- `AnomalySuppression` (eqs 8.1, 8.2) drops a code, or clips its magnitude, when it exceeds gamma times
  its channel neighbour's magnitude (one gate) or both neighbours' (two gates); neighbours wrap around.

Placement: the engine applies these right after the output stage that produces a protected tensor, on
the array's column outputs after requantization (`protect.placement: output`). Ozen places the median on
the array's input connections and AFD at the activation-buffer output; both see the same tensor as this
point except across a max-pool and a flatten, and a linear layer's flattened input has no channel axis
to filter along, so the tool does not offer them at the layer inputs.

Reference: [Ozen] §8.4 (AFD §8.4.1, median §8.4.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCHEMES = ("median3", "median5", "afd")
WINDOWS = (3, 5)
GAMMAS = tuple(2.0**k for k in range(-4, 8))   # powers of two: a shift in hardware, exact on float codes
GATES = (1, 2)
ACTIONS = ("drop", "clip")
_MEDIAN_WINDOWS = {"median3": 3, "median5": 5}


def _median3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def _median5(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    # The smallest and the largest of a..d have at least three codes on their other side, so neither can
    # be the median of five: dropping both leaves the median of the remaining two and e.
    lower = torch.maximum(torch.minimum(a, b), torch.minimum(c, d))
    upper = torch.minimum(torch.maximum(a, b), torch.maximum(c, d))
    return _median3(lower, upper, e)


_MEDIANS: dict[int, Callable[..., torch.Tensor]] = {3: _median3, 5: _median5}


def _require_channels(codes: torch.Tensor) -> None:
    if codes.dim() < 2:
        raise ValueError(f"Protected codes must be laid out (B, C, ...), not shape {tuple(codes.shape)}")


@dataclass(frozen=True)
class MedianFilter:
    """Median feature selection along the channel axis ([Ozen] eq 8.3).

    Output channel c is the median of channels c - w//2 .. c + w//2 of the same image and position.
    Channels are taken in consecutive chunks of `chunk` (the array width; the last chunk may be shorter),
    each zero-padded by w//2 at both ends, as the array sees one chunk at a time. A chunk of w//2 channels
    or fewer holds more zeros than codes in every window, so its output is all zeros.
    The medians are min/max networks, exact on integer codes and much faster than `torch.median`.
    """

    window: int
    chunk: int

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"Median window must be one of 3, 5, not {self.window!r}")
        if not isinstance(self.chunk, int) or isinstance(self.chunk, bool) or self.chunk < 1:
            raise ValueError(f"Median chunk must be a positive integer, not {self.chunk!r}")

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the filtered codes: a new tensor of the input's shape, dtype and device."""
        _require_channels(codes)
        batch, channels = codes.shape[:2]
        positions = math.prod(codes.shape[2:])
        chunks = -(-channels // self.chunk)
        half = self.window // 2
        flat = codes.reshape(batch, channels, positions)
        # Zeros that fill the last chunk to full width lie beyond its codes, so they act as its padding too.
        filled = F.pad(flat, (0, 0, 0, chunks * self.chunk - channels))
        padded = F.pad(filled.reshape(batch, chunks, self.chunk, positions), (0, 0, half, half))
        views = [padded[:, :, k:k + self.chunk] for k in range(self.window)]
        median = _MEDIANS[self.window](*views).reshape(batch, chunks * self.chunk, positions)
        return median[:, :channels].reshape(codes.shape)


@dataclass(frozen=True)
class AnomalySuppression:
    """Anomalous feature detection and suppression along the channel axis ([Ozen] eqs 8.1, 8.2).

    A code A_c violates a neighbour n when |A_c| > gamma * |A_n|. The comparison is strict, so a code
    equal to the threshold is kept, as Ozen's text and eq 8.2 say, where eq 8.1's step function (U(0) = 0)
    would drop it. One gate checks the next channel, c + 1; two gates check c - 1 and c + 1 and suppress
    only a code that violates both, which lets a feature map's edges through but not an isolated spike.
    Neighbours wrap around the whole channel axis (channel C-1 neighbours channel 0); no chunking.

    `drop` sets a suppressed code to 0; `clip` sets its magnitude to the violated threshold (with two gates,
    the larger one) and keeps its sign. The threshold is floor(gamma * |A_n|), what a truncating shift
    gives, so codes stay integers; on integer codes, exceeding it and exceeding gamma * |A_n| agree.

    With a single channel every code is its own neighbour: for gamma >= 1 nothing is suppressed, and for
    gamma < 1 every nonzero code is dropped, or clipped to floor(gamma * |A|) with its sign.
    """

    gamma: float
    gates: int
    action: str

    def __post_init__(self) -> None:
        if self.gamma not in GAMMAS:
            raise ValueError(f"AFD gamma must be a power of two from 2**-4 to 2**7, not {self.gamma!r}")
        if self.gates not in GATES:
            raise ValueError(f"AFD gates must be one of 1, 2, not {self.gates!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"AFD action must be one of drop, clip, not {self.action!r}")

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the suppressed codes: a new tensor of the input's shape, dtype and device."""
        _require_channels(codes)
        magnitude = codes.abs()
        violated, threshold = self._gate(magnitude, torch.roll(magnitude, -1, dims=1))
        if self.gates == 2:
            violated_prev, threshold_prev = self._gate(magnitude, torch.roll(magnitude, 1, dims=1))
            violated = violated & violated_prev
            threshold = torch.maximum(threshold, threshold_prev)
        if self.action == "drop":
            return torch.where(violated, codes.new_zeros(()), codes)
        # 0 - t rather than -t: a zero threshold must give the code 0, not -0.0.
        return torch.where(violated, torch.where(codes < 0, 0 - threshold, threshold), codes)

    def _gate(self, magnitude: torch.Tensor, neighbour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        threshold = torch.floor(self.gamma * neighbour)
        return magnitude > threshold, threshold


def scheme(name: str, *, chunk: int, gamma: float, gates: int, action: str) -> MedianFilter | AnomalySuppression:
    """Return the protection a scheme name selects; `chunk` serves the medians, the rest AFD."""
    if name in _MEDIAN_WINDOWS:
        return MedianFilter(_MEDIAN_WINDOWS[name], chunk)
    if name == "afd":
        return AnomalySuppression(gamma, gates, action)
    raise ValueError(f"Protection scheme must be one of {', '.join(SCHEMES)}, not {name!r}")
