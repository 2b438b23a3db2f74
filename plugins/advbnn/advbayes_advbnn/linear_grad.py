"""nn.Linear's weight gradient in the orientation CPU BLAS computes fast, for HMC's full-batch potential.

autograd computes a linear layer's weight gradient as grad_output^T @ input. When the layer widens a narrow input
(half-moons: 2 inputs, 512 hidden units, 5,000 points) that is a (512 x 5000) @ (5000 x 2) product through a
transposed operand, which MKL's sgemm runs 10-25 times slower than the same numbers as (input^T @ grad_output)^T
(benchmarks/hmc_gradient.py). The layer's full-batch gradient then dominates every leapfrog step. The product is
the same; on this project's CPUs the two orientations give bit-identical gradients (plugins/advbnn/tests/
test_linear_grad.py checks agreement to float rounding everywhere).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional
from torch.overrides import TorchFunctionMode


class _OrientedLinear(torch.autograd.Function):
    """F.linear whose weight gradient is computed with the small dimension first."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return functional.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad_bias = None
        rows, grad_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            wide = weight.shape[0] > weight.shape[1]  # out > in: autograd's grad^T @ x is the slow orientation
            grad_weight = (rows.t() @ grad_rows).t() if wide else grad_rows.t() @ rows
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


class OrientedLinearGrad(TorchFunctionMode):
    """Within it, every F.linear (so every nn.Linear) on a CPU tensor records the oriented weight gradient."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is functional.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.device.type == "cpu" and torch.is_grad_enabled():  # cuBLAS has no such slow orientation
                return _OrientedLinear.apply(x, weight, bias)
        return func(*args, **kwargs)
