"""The CPU fast paths of the self-modifying Titans layer against the code they replace.

The conv's shifted multiply-adds against aten's depthwise convolution with the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbench.nested.hope.titans import CausalDepthwiseConv


def test_causal_conv_equals_the_depthwise_convolution_it_replaces():
    torch.manual_seed(0)
    for window in (1, 2, 4):
        conv = CausalDepthwiseConv(6, window).double()
        x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
        fast = conv(x)
        ref = conv.conv(F.pad(x.transpose(1, 2), (window - 1, 0))).transpose(1, 2)
        assert torch.allclose(fast, ref, atol=1e-14, rtol=0)
        grads = torch.autograd.grad(fast.square().sum(), [x, *conv.parameters()])
        ref_grads = torch.autograd.grad(ref.square().sum(), [x, *conv.parameters()])
        for g, r in zip(grads, ref_grads, strict=True):
            assert torch.allclose(g, r, atol=1e-12, rtol=0)
