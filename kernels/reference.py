"""Plain PyTorch reference of NSA's four kernel ops: the executable specification.

Every op here is masked dense attention written to be read, not to be fast: it builds the full
[T, S] visibility mask of the definition in /work/shared/NSA.md and applies one softmax. Tests
compare every other implementation (the chunked CPU path, the Triton kernels) against these.

Conventions shared by all ops:
- Layout BTHD: q [B, T, Hq, Dk], keys [B, S, Hkv, Dk], values [B, S, Hkv, Dv]; Hq = G * Hkv and
  query head h reads KV head h // G (GQA). Positions are 0-based; key s is causal for query t iff s <= t.
- Query offset `q_start` (default 0): q's row r is the query at position t = q_start + r, and the keys
  cover positions 0 .. S-1 with S = q_start + T (k_cmp: the num_compressed_tokens(S) compressed tokens).
  This is how queries that follow a cached prefix (chunked prefill, one decoding step) are run; the
  result equals rows q_start.. of the same op on the whole sequence. Every rule below uses t.
- `scale=None` means Dk ** -0.5.
- Softmax math runs in float32 (float64 when the inputs are float64); `o` comes back in the input
  dtype and `lse` (log-sum-exp of the scaled scores) in float32.
- A query with no visible key gets o = 0 and lse = -inf, and contributes zero gradient (never NaN).

This module also holds the one source of truth for NSA's size rules (`check_nsa_sizes`) and the
tensor-shape checks every public op runs first.
"""

from __future__ import annotations

import math

import torch

# ----------------------------------------------------------------------------------------------
# size rules and input checks


def _require_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"NSA sizes: {name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"NSA sizes: {name}={value} must be {kind} (set {name} >= {minimum})")
    return value


def check_nsa_sizes(
    *,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
    block_size: int | None = None,
    stride: int | None = None,
    select_size: int | None = None,
    num_select: int | None = None,
    num_init: int = 1,
    num_local: int = 2,
    window: int | None = None,
) -> None:
    """Raise a one-line ValueError when sizes break NSA's rules; sizes left as None are not checked.

    Names follow the kernel interface: block_size = l (compression block), stride = d,
    select_size = l' (selection block), num_select = n, window = w. Rules (NSA.md):
    all sizes positive (num_init, num_local >= 0), n_heads % n_kv_heads == 0, d | l, d | l',
    l <= l', n >= num_init + num_local. The model's config validation calls this too.
    """
    for name, value in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads), ("block_size", block_size),
                        ("stride", stride), ("select_size", select_size), ("num_select", num_select),
                        ("window", window)):
        if value is not None:
            _require_int(name, value, 1)
    _require_int("num_init", num_init, 0)
    _require_int("num_local", num_local, 0)
    if n_heads is not None and n_kv_heads is not None and n_heads % n_kv_heads != 0:
        raise ValueError(f"NSA sizes: n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads} "
                         f"(GQA needs each KV head shared by a whole number of query heads)")
    if stride is not None and block_size is not None and block_size % stride != 0:
        raise ValueError(f"NSA sizes: stride={stride} must divide block_size={block_size} "
                         f"(pick a stride that divides it, e.g. block_size // 2)")
    if stride is not None and select_size is not None and select_size % stride != 0:
        raise ValueError(f"NSA sizes: stride={stride} must divide select_size={select_size} "
                         f"(pick a select_size that is a multiple of the stride)")
    if block_size is not None and select_size is not None and block_size > select_size:
        raise ValueError(f"NSA sizes: block_size={block_size} must be <= select_size={select_size} "
                         f"(a compression block may not be longer than a selection block)")
    if num_select is not None and num_select < num_init + num_local:
        raise ValueError(f"NSA sizes: num_select={num_select} < num_init={num_init} + num_local={num_local} "
                         f"(the forced blocks count within num_select: raise num_select or lower them)")


def check_q_start(op: str, q_start: object) -> int:
    """q_start must be an int >= 0: the position of q's first row."""
    if isinstance(q_start, bool) or not isinstance(q_start, int) or q_start < 0:
        raise ValueError(f"{op}: q_start={q_start!r} must be a non-negative int (the position of q's first row, "
                         f"i.e. the number of cached positions before it; 0 without a prefix)")
    return q_start


def num_compressed_tokens(seq_len: int, block_size: int, stride: int) -> int:
    """Number of compressed tokens of a length-`seq_len` sequence: blocks [i*d, i*d + l) inside it."""
    return max(0, (seq_len - block_size) // stride + 1)


def _check_4d_float(op: str, **tensors: torch.Tensor) -> None:
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{op}: {name} must be a 4-D BTHD tensor [B, T, H, D], got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {x.dtype}")
        if min(x.shape[0], x.shape[2], x.shape[3]) < 1:
            raise ValueError(f"{op}: {name} has an empty batch/head/feature dim, shape {tuple(x.shape)}")


def check_attention_inputs(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                           num_keys: int | None = None, names: tuple[str, str] = ("k", "v"),
                           q_start: int = 0) -> None:
    """Cheap shape/dtype/device checks for q [B,T,Hq,Dk], k [B,S,Hkv,Dk], v [B,S,Hkv,Dv].

    `num_keys` is the key length the op requires (q_start + T for token branches, the compressed
    length of that for the compression branch); `names` are k's and v's names in messages; `q_start`
    (already checked) only words the message. Reads only metadata: no device synchronisation.
    """
    kn, vn = names
    _check_4d_float(op, q=q, **{kn: k, vn: v})
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{op}: q, {kn}, {vn} must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype} "
                         f"(cast them to one dtype)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{op}: q, {kn}, {vn} must be on one device, got {q.device}, {k.device}, {v.device}")
    B, T, Hq, Dk = q.shape
    if T < 1:
        raise ValueError(f"{op}: q has no positions (T=0); call it on a sequence of length >= 1")
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"{op}: batch sizes differ: q {B}, {kn} {k.shape[0]}, {vn} {v.shape[0]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"{op}: {kn} has {k.shape[1]} positions but {vn} has {v.shape[1]}; they must match")
    if num_keys is not None and k.shape[1] != num_keys:
        where = f" at q_start={q_start} (keys cover positions 0 .. q_start + T - 1 = {q_start + T - 1})" \
            if q_start else ""
        raise ValueError(f"{op}: {kn} has {k.shape[1]} positions, expected {num_keys} for q of length {T}{where} "
                         f"(check q_start and the sizes the keys were built with)")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"{op}: {kn} has {k.shape[2]} heads but {vn} has {v.shape[2]}; they must match")
    if k.shape[3] != Dk:
        raise ValueError(f"{op}: q head dim {Dk} != {kn} head dim {k.shape[3]}; they must match")
    check_nsa_sizes(n_heads=Hq, n_kv_heads=k.shape[2])


def check_lse(op: str, lse: torch.Tensor, q: torch.Tensor) -> None:
    if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != tuple(q.shape[:3]):
        shape = tuple(lse.shape) if isinstance(lse, torch.Tensor) else type(lse).__name__
        raise ValueError(f"{op}: lse must have shape [B, T, Hq] = {tuple(q.shape[:3])} "
                         f"(the lse returned by compressed_attention), got {shape}")
    if not lse.is_floating_point() or lse.device != q.device:
        raise ValueError(f"{op}: lse must be a floating tensor on {q.device}, got {lse.dtype} on {lse.device}")


def check_block_indices(op: str, idx: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
    B, T, _, _ = q.shape
    if not isinstance(idx, torch.Tensor) or idx.dim() != 4 or tuple(idx.shape[:3]) != (B, T, k.shape[2]):
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"{op}: idx must have shape [B, T, Hkv, num_select] with (B, T, Hkv) = "
                         f"{(B, T, k.shape[2])} (the output of select_blocks), got {shape}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"{op}: idx must be an integer tensor (int32 from select_blocks), got {idx.dtype}")
    if idx.device != q.device:
        raise ValueError(f"{op}: idx is on {idx.device} but q is on {q.device}")


# ----------------------------------------------------------------------------------------------
# shared math (also used by kernels/chunked.py, so the empty-row rule lives in one place)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax/accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def resolve_scale(scale: float | None, head_dim: int) -> float:
    return head_dim ** -0.5 if scale is None else float(scale)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor,
                   need_lse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax of `scores` over the last dim restricted to `mask` (broadcastable, True = visible).

    Returns (p, lse) with lse shaped like scores minus the last dim (None unless need_lse). A row
    with no visible entry gets p = 0 and lse = -inf, and every gradient through it is exactly zero:
    such a row is softmaxed unmasked (finite numbers, so no NaN in forward or backward) and then
    zeroed, so nothing flows back into it.
    """
    nonempty = mask.any(dim=-1, keepdim=True)  # as small as the mask: cheap
    scores = scores.masked_fill(~(mask | ~nonempty), float("-inf"))
    p = torch.softmax(scores, dim=-1).masked_fill(~nonempty, 0.0)
    if not need_lse:
        return p, None
    return p, torch.logsumexp(scores, dim=-1).masked_fill(~nonempty.squeeze(-1), float("-inf"))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
           need_lse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked dense GQA attention.

    q [B, T, Hq, Dk], k [B, S, Hkv, Dk], v [B, S, Hkv, Dv], mask broadcastable to
    [B, Hkv, G, T, S] (True = key visible; a [T, S] mask applies to every batch and head).
    Returns o [B, T, Hq, Dv] in q's dtype and lse [B, T, Hq] float32 (None unless need_lse).
    """
    B, T, Hq, Dk = q.shape
    S, Hkv, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = Hq // Hkv
    ct = compute_dtype(q.dtype)
    # head-major layout, one matmul per (batch, KV head); query head h = kv * G + g reads KV head h // G
    qh = (q.to(ct) * scale).reshape(B, T, Hkv, G, Dk).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * T, Dk)
    scores = torch.matmul(qh, k.to(ct).permute(0, 2, 3, 1)).reshape(B, Hkv, G, T, S)
    p, lse = masked_softmax(scores, mask, need_lse)
    o = torch.matmul(p.reshape(B, Hkv, G * T, S), v.to(ct).permute(0, 2, 1, 3))  # [B, Hkv, G*T, Dv]
    o = o.reshape(B, Hkv, G, T, Dv).permute(0, 3, 1, 2, 4).reshape(B, T, Hq, Dv).to(q.dtype)
    if lse is not None:
        lse = lse.permute(0, 3, 1, 2).reshape(B, T, Hq).float()
    return o, lse


def overlap_weights(num_cmp: int, num_blocks: int, *, block_size: int, stride: int, select_size: int,
                    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """W [num_cmp, num_blocks]: W[i, j] = |[i*d, i*d+l) ∩ [j*l', (j+1)*l')| / d (NSA.md, selection step 3)."""
    start = torch.arange(num_cmp, device=device)[:, None] * stride
    lo = torch.arange(num_blocks, device=device)[None, :] * select_size
    overlap = (torch.minimum(start + block_size, lo + select_size) - torch.maximum(start, lo)).clamp(min=0)
    return overlap.to(dtype) / stride


def choose_blocks(score: torch.Tensor, positions: torch.Tensor, *, select_size: int, num_select: int,
                  num_init: int, num_local: int) -> torch.Tensor:
    """Pick selection blocks from block scores.

    score [B, R, Hkv, Nb]: importance of blocks 0..Nb-1 for the queries at `positions` [R]; Nb must
    cover every block visible to them. Visible: j * l' <= t. Forced (always chosen, counted within
    num_select): the first `num_init` blocks and the `num_local` most recent blocks t//l', t//l' - 1, ...
    (only those >= 0). The other slots go to the highest-scoring visible blocks; ties go to the lower
    block id. Returns int32 [B, R, Hkv, num_select]: chosen ids ascending, then -1 padding.
    """
    Nb = score.shape[-1]
    j = torch.arange(Nb, device=score.device)
    current = (positions // select_size)[:, None]  # [R, 1]: the block holding t
    visible = j[None, :] <= current  # j * l' <= t
    forced = visible & ((j[None, :] < num_init) | (j[None, :] > current - num_local))
    inf = torch.tensor(float("inf"), dtype=score.dtype, device=score.device)
    prio = torch.where(forced[None, :, None, :], inf,
                       torch.where(visible[None, :, None, :], score, -inf))
    if Nb < num_select:  # short prefix: pad with never-chosen columns so there are num_select candidates
        prio = torch.cat([prio, (-inf).expand(*prio.shape[:-1], num_select - Nb)], dim=-1)
    # stable descending sort: equal priorities keep ascending block order -> lower id wins ties
    prio_sorted, order = torch.sort(prio, dim=-1, descending=True, stable=True)
    ids = torch.where(prio_sorted[..., :num_select] == -inf, -1, order[..., :num_select])
    # canonical order (ascending ids, -1 last) so that implementations can be compared exactly
    big = prio.shape[-1]
    ids = torch.where(ids < 0, big, ids).sort(dim=-1).values
    return torch.where(ids == big, -1, ids).to(torch.int32)


# ----------------------------------------------------------------------------------------------
# the four ops


def compressed_attention(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *, block_size: int,
                         stride: int, scale: float | None = None,
                         q_start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query to the compressed tokens whose whole block it has seen.

    q [B, T, Hq, Dk] at positions q_start .. q_start+T-1, k_cmp [B, Tc, Hkv, Dk], v_cmp [B, Tc, Hkv, Dv]
    with Tc = num_compressed_tokens(q_start + T). Compressed token i (covering [i*d, i*d + l)) is
    visible to the query at position t iff i*d + l - 1 <= t.
    Returns o [B, T, Hq, Dv] (zeros where nothing is visible) and lse [B, T, Hq] float32 (-inf there).
    """
    op = "compressed_attention"
    check_nsa_sizes(block_size=block_size, stride=stride)
    check_q_start(op, q_start)
    T = q.shape[1]
    check_attention_inputs(op, q, k_cmp, v_cmp, names=("k_cmp", "v_cmp"), q_start=q_start,
                           num_keys=num_compressed_tokens(q_start + T, block_size, stride))
    t = q_start + torch.arange(T, device=q.device)
    i = torch.arange(k_cmp.shape[1], device=q.device)
    visible = i[None, :] * stride + block_size - 1 <= t[:, None]  # [T, Tc]
    return attend(q, k_cmp, v_cmp, visible, resolve_scale(scale, q.shape[-1]))


@torch.no_grad()
def block_scores(q: torch.Tensor, k_cmp: torch.Tensor, lse: torch.Tensor, *, block_size: int, stride: int,
                 select_size: int, scale: float | None = None, q_start: int = 0) -> torch.Tensor:
    """The importance of every selection block, [B, T, Hkv, Nb] with Nb = ceil((q_start + T) / l'), in the compute
    dtype (NSA.md, selection steps 1-3): p[t, h, i] = exp(q_t,h . k_cmp[i] * scale - lse[t, h]) over visible i,
    summed over the G heads of a group and spread over the blocks by `overlap_weights`. Shapes as select_blocks."""
    B, T, Hq, Dk = q.shape
    Tc, Hkv = k_cmp.shape[1], k_cmp.shape[2]
    ct = compute_dtype(q.dtype)
    t = q_start + torch.arange(T, device=q.device)
    visible = torch.arange(Tc, device=q.device)[None, :] * stride + block_size - 1 <= t[:, None]  # [T, Tc]
    scores = torch.einsum("bthgd,bihd->bthgi", q.to(ct).reshape(B, T, Hkv, Hq // Hkv, Dk), k_cmp.to(ct))
    lse_g = lse.to(ct).reshape(B, T, Hkv, Hq // Hkv, 1)
    p = torch.exp(scores * resolve_scale(scale, Dk) - lse_g)
    p = torch.where(visible[None, :, None, None, :] & torch.isfinite(lse_g), p, torch.zeros_like(p))
    num_blocks = math.ceil((q_start + T) / select_size)
    W = overlap_weights(Tc, num_blocks, block_size=block_size, stride=stride, select_size=select_size,
                        dtype=ct, device=q.device)
    return p.sum(dim=3) @ W


def select_blocks(q: torch.Tensor, k_cmp: torch.Tensor, lse: torch.Tensor, *, block_size: int, stride: int,
                  select_size: int, num_select: int, num_init: int = 1, num_local: int = 2,
                  scale: float | None = None, q_start: int = 0) -> torch.Tensor:
    """Choose `num_select` selection blocks per query and KV group from compression-branch importance.

    q [B, T, Hq, Dk] at positions q_start .. q_start+T-1, k_cmp [B, Tc, Hkv, Dk] with
    Tc = num_compressed_tokens(q_start + T), lse [B, T, Hq] (from compressed_attention with the same
    scale and q_start). The scores of `block_scores`, then `choose_blocks`.
    Returns int32 [B, T, Hkv, num_select] (ascending ids, -1 padding). No gradient.
    """
    op = "select_blocks"
    check_nsa_sizes(block_size=block_size, stride=stride, select_size=select_size, num_select=num_select,
                    num_init=num_init, num_local=num_local)
    check_q_start(op, q_start)
    check_attention_inputs(op, q, k_cmp, k_cmp, names=("k_cmp", "k_cmp"), q_start=q_start,
                           num_keys=num_compressed_tokens(q_start + q.shape[1], block_size, stride))
    check_lse(op, lse, q)
    score = block_scores(q, k_cmp, lse, block_size=block_size, stride=stride, select_size=select_size, scale=scale,
                         q_start=q_start)
    return choose_blocks(score, q_start + torch.arange(q.shape[1], device=q.device), select_size=select_size,
                         num_select=num_select, num_init=num_init, num_local=num_local)


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *,
                       select_size: int, scale: float | None = None, q_start: int = 0) -> torch.Tensor:
    """Attention of each query to the causal keys of its selected blocks.

    q [B, T, Hq, Dk] at positions q_start .. q_start+T-1, k [B, S, Hkv, Dk], v [B, S, Hkv, Dv] with
    S = q_start + T, idx [B, T, Hkv, n] integer block ids (block j covers [j*l', (j+1)*l')). The query at
    position t (row t - q_start), head h sees key s iff s <= t and s // l' is one of its row's
    idx[b, t - q_start, h // G, :]. Ids that are negative (-1 = unused) or past the sequence select
    nothing; repeated ids count once. Returns o [B, T, Hq, Dv] (zeros where nothing is visible).
    """
    op = "selected_attention"
    check_nsa_sizes(select_size=select_size)
    check_q_start(op, q_start)
    T = q.shape[1]
    check_attention_inputs(op, q, k, v, num_keys=q_start + T, q_start=q_start)
    check_block_indices(op, idx, q, k)
    s = torch.arange(q_start + T, device=q.device)
    t = q_start + torch.arange(T, device=q.device)
    in_chosen = (idx.long()[..., None, :] == (s // select_size)[:, None]).any(dim=-1)  # [B, T, Hkv, S]
    causal = s[None, :] <= t[:, None]  # [T, S]
    mask = (in_chosen & causal[None, :, None, :]).permute(0, 2, 1, 3)  # [B, Hkv, T, S]
    return attend(q, k, v, mask[:, :, None], resolve_scale(scale, q.shape[-1]), need_lse=False)[0]


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int,
                     scale: float | None = None, q_start: int = 0) -> torch.Tensor:
    """Sliding-window causal attention: the query at position t sees keys t - window < s <= t.

    q [B, T, Hq, Dk] at positions q_start .. q_start+T-1, k [B, S, Hkv, Dk], v [B, S, Hkv, Dv] with
    S = q_start + T -> o [B, T, Hq, Dv].
    """
    op = "window_attention"
    check_nsa_sizes(window=window)
    check_q_start(op, q_start)
    T = q.shape[1]
    check_attention_inputs(op, q, k, v, num_keys=q_start + T, q_start=q_start)
    s = torch.arange(q_start + T, device=q.device)
    t = q_start + torch.arange(T, device=q.device)
    mask = (s[None, :] <= t[:, None]) & (s[None, :] > t[:, None] - window)  # [T, S]
    return attend(q, k, v, mask, resolve_scale(scale, q.shape[-1]), need_lse=False)[0]
