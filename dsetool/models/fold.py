"""Fold each batch norm into the convolution before it, as the float model's last step before quantization.

Why before QAT and not after: the integer engine and the accelerator run a conv with a bias and nothing
else, so the network Brevitas trains and exports must be that network. The quantized model has no norms;
it starts from the folded float weights (`stages.quantize`), and QAT adjusts them with the quantizers in
place. In eval mode the fold is exact up to float rounding:

    w' = w * gamma / sqrt(var + eps)    (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx
from torch import nn


def conv_norm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Return (conv, norm) module names where a BatchNorm2d reads a Conv2d's output and nothing else does."""
    graph = torch.fx.Tracer().trace(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and source.op == "call_module" \
                and isinstance(modules.get(source.target), nn.Conv2d) and len(source.users) == 1:
            pairs.append((str(source.target), str(node.target)))
    return pairs


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Return a copy of `model` (eval mode) with every conv-then-norm pair folded into the conv (which gains
    a bias if it had none) and the norm replaced by an identity. A norm no conv feeds raises ValueError:
    the integer model has no op for it."""
    folded = copy.deepcopy(model).eval()
    pairs = conv_norm_pairs(folded)
    paired = {norm for _, norm in pairs}
    lonely = [name for name, module in folded.named_modules()
              if isinstance(module, nn.modules.batchnorm._BatchNorm) and name not in paired]
    if lonely:
        raise ValueError(f"Batch norm {lonely[0]!r} does not follow a conv whose output only it reads, so "
                         "it cannot be folded (the integer model has no batch-norm op)")
    for conv_name, norm_name in pairs:
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
        _fold_into(conv, norm)
        _replace(folded, norm_name, nn.Identity())
    return folded


def folded_state(model: nn.Module) -> dict[str, Any]:
    """Return the state dict of `fold_batch_norms(model)`: what the quantized model's weight layers load."""
    return fold_batch_norms(model).state_dict()


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    assert norm.running_mean is not None and norm.running_var is not None
    factor = (norm.weight if norm.affine else torch.ones_like(norm.running_var)) \
        / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    new_bias = (bias - norm.running_mean) * factor + shift
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, module)
