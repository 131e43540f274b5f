"""Silence start-up chatter of torch and Brevitas that says nothing about the user's run.

Imported before Brevitas: a CPU-only machine would otherwise print a "No CUDA runtime" log line and a
warning about an optional Hadamard-transform package on every stage that computes.
"""

from __future__ import annotations

import logging
import warnings

logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
# Brevitas's fx backport reads a deprecated pytree field on every trace (graph quantization of a factory model).
warnings.filterwarnings("ignore", message=r"`treespec.children_specs` is deprecated")
