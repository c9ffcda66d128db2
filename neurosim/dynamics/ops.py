"""Matrix products on tensors with or without a leading ensemble axis.

An ordinary network's tensors are matrices: states (batch x n), weights (n_post x n_pre). An
ensemble of M networks (neurosim.training.ensemble) stacks them along a leading axis: states
(M x batch x n), weights (M x n_post x n_pre), and each member's products are that member's
own. These helpers run the 2-d BLAS call for matrices (unchanged numerics) and the batched
one otherwise; inputs shared by every member (batch x n) broadcast against stacked weights.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

FEW_ROWS = 16               # CPU products with fewer rows: see addmm_
#: a strided product target of at least this many entries per member is updated member by
#: member in place (measured on CPUs: faster than a batched product plus a copy from about
#: 200 x 500 entries on)
MEMBER_LOOP_SIZE = 100_000


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b: ``torch.mm`` for two matrices, else the batched product (a shared matrix
    broadcast over the ensemble axis)."""
    if a.dim() == 2 and b.dim() == 2:
        return torch.mm(a, b, out=out)
    if out is None:
        return torch.matmul(a, b)
    if a.dim() == 3 and b.dim() == 3:
        return torch.bmm(a, b, out=out)
    return torch.matmul(a, b, out=out)


def addmm_(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1.0,
           alpha=1.0) -> torch.Tensor:
    """target <- beta target + alpha (a @ b), in place (``addmm_`` or ``baddbmm_``);
    ``alpha`` a number, or one per member (a 1-d tensor, folded into ``a``). On the CPU, a
    target of fewer than :data:`FEW_ROWS` rows in memory order (its columns when it is
    column-major) takes the product first, then the scaling and the sum: MKL's fused form
    sums such products less accurately (float32, 1,010 terms: about 20 times the error of
    the plain product at 1-3 rows; 10 times at 10 rows of 510 terms)."""
    if target.device.type == "cpu" and _memory_rows(target) < FEW_ROWS:
        if target.dim() == 3:
            a, b, alpha = _batched(target, a, b, alpha)
        product = matmul(a, b)
        if beta != 1.0:
            target.mul_(beta)
        return target.add_(product, alpha=alpha)
    if target.dim() == 2:
        return target.addmm_(a, b, beta=beta, alpha=alpha)
    a, b, alpha = _batched(target, a, b, alpha)
    if target.is_contiguous():
        return target.baddbmm_(a, b, beta=beta, alpha=alpha)
    if target.shape[-2] * target.shape[-1] >= MEMBER_LOOP_SIZE:
        # large products (evaluation batches) keep every thread busy on their own: one
        # in-place product per member, no copy of the result
        for member, left, right in zip(target, a, b):
            member.addmm_(left, right, beta=beta, alpha=alpha)
        return target
    # torch's CPU baddbmm_ into a strided view (e.g. a population's columns of the state)
    # runs one product per member on one thread; into a new tensor it runs them in parallel
    return target.copy_(torch.baddbmm(target, a, b, beta=beta, alpha=alpha))


def addmm(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1.0,
          alpha=1.0) -> torch.Tensor:
    """beta target + alpha (a @ b) as a new tensor (``addmm`` or ``baddbmm``)."""
    if target.dim() == 2 and a.dim() == 2 and b.dim() == 2:
        return torch.addmm(target, a, b, beta=beta, alpha=alpha)
    a, b, alpha = _batched(target, a, b, alpha)
    return torch.baddbmm(target, a, b, beta=beta, alpha=alpha)


def _memory_rows(target: torch.Tensor) -> int:
    """The rows of ``target`` as BLAS sees them: its columns when it is column-major (a
    transposed view, e.g. ``u_p.mT`` of a narrow population), else its rows."""
    if target.stride(-2) == 1 and target.stride(-1) != 1:
        return target.shape[-1]
    return target.shape[-2]


def _batched(target, a, b, alpha):
    """Operands of a batched product: shared matrices expanded over the members, a
    per-member ``alpha`` folded into ``a``."""
    members = max(t.shape[0] for t in (target, a, b) if t.dim() == 3)
    if a.dim() == 2:
        a = a.expand(members, *a.shape)
    if b.dim() == 2:
        b = b.expand(members, *b.shape)
    if isinstance(alpha, torch.Tensor):
        a, alpha = a * member_scale(alpha, a), 1.0
    return a, b, alpha


def member_scale(value, like: torch.Tensor):
    """A per-member number as a factor for (M x rows x cols) tensors: a float stays a float,
    a 1-d tensor of M values becomes M x 1 x 1 (dtype and device of ``like``)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.to(like.device, like.dtype).reshape(-1, 1, 1)
    return float(value)


@functools.lru_cache(maxsize=None)
def cpu_flags() -> str:
    """The CPU's feature flags as the kernel lists them (Linux), else the platform's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16), so that a
    bfloat16 matrix product runs about twice as fast as a float32 one (without them torch
    emulates it, slower than float32)."""
    flags = cpu_flags().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags
