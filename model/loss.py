"""Fused lm_head + cross-entropy for training: the loss of `h @ weight.T` without the whole [N, V] logits.

With a 50k vocabulary the logits are the largest activation of a small GPT (3.3 GB in bf16 for 32k rows of
V=50304), kept from the forward to the backward pass by the plain path. Here the rows are taken
`chunk_size` at a time: a chunk's logits are computed, reduced to its loss and, right away, turned into the
gradient wrt those logits, (softmax - onehot) / n_valid, which is pushed through the matmul into dh and dW.
Only [chunk, V] exists at any time. The backward pass has nothing left to do but scale dh and dW by the
incoming gradient (the loss is a scalar, so its gradient is one number).

Dtypes: the matmuls run in the compute dtype (the autocast dtype when autocast is on, else h's dtype; the
weight is cast to it), the softmax math in at least float32, and dW is accumulated over the chunks in at least
float32 before it is returned in the weight's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
    """Mean cross-entropy of the logits h @ weight.T over the targets that are not -1.

    h [N, C], weight [V, C], targets [N] integer class ids (-1 = ignored) -> scalar loss, equal to
    F.cross_entropy(h @ weight.T, targets, ignore_index=-1) (NaN when every target is ignored, as there; the
    gradients are then zero). Rows are processed chunk_size at a time, so peak extra memory is ~[chunk_size, V]
    in float32 instead of the full logits. Gradients are computed during the forward pass only for the inputs
    that need them (none under torch.no_grad).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size} must be positive: pass the number of rows per chunk")
    compute_dtype = h.dtype
    # Under autocast h (the RMSNorm output) arrives in float32, or in the autocast dtype with
    # model.residual_dtype=compute, and the weight is the float32 parameter: what autocast would have done to the
    # lm_head matmul is done here explicitly (float64 is never autocast).
    if torch.is_autocast_enabled(h.device.type) and h.dtype != torch.float64:
        compute_dtype = torch.get_autocast_dtype(h.device.type)
    grad_on = torch.is_grad_enabled()
    # Autocast is off inside: every cast is the explicit one above or in the loop, none is done twice.
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(
            h, weight, targets, chunk_size, compute_dtype, grad_on and h.requires_grad, grad_on and weight.requires_grad
        )


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        h: Tensor,
        weight: Tensor,
        targets: Tensor,
        chunk_size: int,
        compute_dtype: torch.dtype,
        need_dh: bool,
        need_dw: bool,
    ) -> Tensor:
        math_dtype = torch.promote_types(compute_dtype, torch.float32)  # softmax and loss sums
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)  # dW summed over chunks
        w = weight.to(compute_dtype)
        valid = targets != -1
        n_valid = valid.sum()
        # Each valid row's share of the mean; ignored rows get 0 (and nothing divides by 0 when all are ignored).
        row_scale = valid.to(math_dtype) / n_valid.clamp(min=1).to(math_dtype)
        safe_targets = targets.clamp(min=0)[:, None]  # any in-range index for ignored rows (masked out below)
        vocab_ids = torch.arange(weight.shape[0], device=h.device)
        minus_one = torch.full((1, 1), -1.0, dtype=math_dtype, device=h.device)

        loss_sum = torch.zeros((), dtype=math_dtype, device=h.device)
        dh_chunks: list[Tensor] = []
        dw = None
        for start in range(0, h.shape[0], chunk_size):
            h_c = h[start : start + chunk_size].to(compute_dtype)
            t_c = safe_targets[start : start + chunk_size]
            valid_c = valid[start : start + chunk_size]
            logp = torch.log_softmax(h_c @ w.T, dim=-1, dtype=math_dtype)  # [n, V]
            loss_sum = loss_sum - torch.where(valid_c, logp.gather(1, t_c)[:, 0], 0).sum()
            if not (need_dh or need_dw):
                continue
            # d(loss)/d(logits) = (softmax - onehot) * row_scale. The row scale is applied to the [n, C] sides
            # (h_c, dh_c) rather than to the [n, V] gradient: one pass over the big tensor less. Compiled, the
            # gradient is one elementwise expression, which Inductor makes a single kernel (logits in, grad
            # out); a scatter would split it and materialise a float32 copy. Eager, in-place ops do fewer passes.
            if torch.compiler.is_compiling():
                grad = logp.exp() - (vocab_ids == t_c).to(math_dtype)
            else:
                grad = logp.exp_().scatter_add_(1, t_c, minus_one.expand_as(t_c))
            grad = grad.to(compute_dtype)
            scale_c = row_scale[start : start + chunk_size, None]
            if need_dh:
                dh_chunks.append((grad @ w).to(math_dtype) * scale_c)  # [n, C]
            if need_dw:
                dw_c = grad.T @ (h_c * scale_c).to(compute_dtype)  # [V, C]
                dw = dw_c.to(acc_dtype) if dw is None else dw.add_(dw_c)

        dh = torch.cat(dh_chunks).to(h.dtype) if need_dh else None
        dw = dw.to(weight.dtype) if need_dw else None
        ctx.need_dh, ctx.need_dw = need_dh, need_dw
        ctx.save_for_backward(*[t for t in (dh, dw) if t is not None])
        return loss_sum / n_valid  # 0 / 0 = NaN when every target is ignored, as in F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        saved = iter(ctx.saved_tensors)
        dh = next(saved) * grad_loss if ctx.need_dh else None
        dw = next(saved) * grad_loss if ctx.need_dw else None
        return dh, dw, None, None, None, None, None
