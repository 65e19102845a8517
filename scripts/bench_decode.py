"""Benchmark NSA decoding on the GPU against full attention (the paper's Table 4, measured).

    python scripts/bench_decode.py --out decode.json                  # everything (one H100: ~3 min)
    python scripts/bench_decode.py --sections attn --T 65536 --B 1    # one point

Sections (bf16; NSA with the paper's sizes l=32, d=16, l'=64, n=16, w=512, separate K/V per branch):
- bandwidth: the card's measured memory bandwidth: a 1 GiB device-to-device copy (bytes read + written per
  second) and a read-only pass (sum of 1 GiB); and the timing floor of a step: a graph of 1 and of 3 chained
  one-element kernels, timed as the attn section times a step.
- attn: one decoding step (one query per sequence at position T - 1, keys 0..T-1) for each shape (main:
  Hq=64, Hkv=4, D=128; small: Hq=16, Hkv=1, D=64, the small_gqa16 model's), batch B and context T.
  NSA = the public ops as the model calls them (compressed attention and block selection,
  kernels.compressed_attention_and_select -> selected and window attention in one launch,
  kernels.selected_and_window_attention), dispatched to the decode kernels of
  kernels/triton_decode.py (every op's splits combined by a second launch: the default); also as four launches
  ("4 ops": selected and window attention separately), with every op's splits combined inside its own launch
  ("fused"), and per op; and as the model's graphed decoding runs it, the position in a device tensor (the
  *_at launches: "at"); "keys" / "scores": the step with the selection scoring the compressed keys or reading
  compressed attention's scores (the selection tiles' scores_from "keys" / "attention"; outputs against the
  default's in "keys_check" / "attention_check"); "serial" / "pdl": the step with every decode kernel launched
  after the one before has finished, or with programmatic dependent launch (the decode tiles' pdl; "at_serial",
  "at_pdl": the *_at step so). Full attention
  = SDPA on the same cache: the model's call (q [B, Hq, 1, D], GQA through enable_gqa) and the G heads of a
  group folded into G query rows (reads each KV head once: the best decode path SDPA offers), with the
  default, flash, efficient and cuDNN backends; "full" is the fastest of them.
  Timing: the step captured in a CUDA graph, each replay timed with CUDA events after rewriting a 256 MiB
  buffer (a cold L2, as in a model where the other layers run in between: NSA's bytes at batch 1 would
  otherwise sit in the 50 MB L2); median of the replays, in microseconds. "warm" = back-to-back replays
  (L2-resident inputs where they fit); "eager" = host wall time per step without a graph (launch-bound).
  Bytes: the KV tokens a step must load, per the paper's Table 4, (T - l)//d + n*l' + w for NSA and T for full
  attention, times B * Hkv * (Dk + Dv) * 2 bytes; bandwidth = bytes / time, also as a fraction of the copy
  bandwidth. "loaded" counts what these kernels read: the compressed keys twice (attention, then scoring).
- generate: end-to-end GPT.generate() (prefill + N new tokens, greedy) of a small model (12 layers, 768 wide,
  16 query heads on 1 KV head of 64, vocabulary 8192) with full and with NSA attention, eager and with
  cuda_graph=True ("-graph": one captured decoding step replayed per token): decode tokens/s =
  B * (N - N//2) / (time of generate(N) - time of generate(N//2)) (the prefill, the first steps and the capture
  cancel out, up to their jitter: N = --gen-new eager, --gen-new-graph graphed), and the KV-cache bytes per
  token and layer.
- sweep: decode tile/split alternatives for the NSA step at T=64k, B=1, main shape.
Results go to --out as JSON (rewritten atomically after every measurement); a table is printed at the end.
--budget-s stops starting new measurements once that many seconds have passed (they are recorded as skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_shapes import HEAD_SHAPES, NSA  # noqa: E402

import kernels  # noqa: E402
from common.files import write_text_atomic  # noqa: E402
from kernels.reference import num_compressed_tokens  # noqa: E402

SHAPES = {name: dict(Hq=hq, Hkv=hkv, D=dk) for name, (hq, hkv, dk, _) in HEAD_SHAPES.items() if name != "paper"}
START = time.time()
DEV = "cuda"


# ----------------------------------------------------------------------------------------------
# timing


_FLUSH: list[torch.Tensor] = []


def cold_l2() -> None:
    """Rewrite a 256 MiB buffer: evicts whatever the 50 MB L2 holds."""
    if not _FLUSH:
        _FLUSH.append(torch.empty(256 * 2**20, dtype=torch.uint8, device=DEV))
    _FLUSH[0].fill_(1)


def graph_times(fn, reps: int = 40) -> dict:
    """fn captured in a CUDA graph: median GPU microseconds per replay with a cold L2 ("us") and back to back
    ("warm_us")."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles, allocates) outside the capture
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        cold_l2()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    cold = statistics.median(s.elapsed_time(e) for s, e in events) * 1e3
    warm = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        end.synchronize()
        warm.append(start.elapsed_time(end) * 1e3 / 20)
    del graph
    return {"us": cold, "warm_us": statistics.median(warm)}


def eager_us(fn, reps: int = 20) -> float:
    """Host wall microseconds per call of fn without a graph (synchronised once at the end)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


# ----------------------------------------------------------------------------------------------
# bandwidth


def bench_bandwidth() -> dict:
    n = 2**30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    x = torch.randn(n // 2, dtype=torch.bfloat16, device=DEV)

    def timed(fn):
        fn()
        times = []
        for _ in range(10):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        return statistics.median(times)
    copy_s = timed(lambda: dst.copy_(src))
    read_s = timed(lambda: x.sum(dtype=torch.float32))
    out = {"copy_GBps": 2 * n / copy_s / 1e9, "read_GBps": n / read_s / 1e9}
    src = dst = x = None  # free the 3 GiB before the graphs below
    # The floor of graph_times: a graph of 1 and of 3 dependent one-element kernels, timed as a decoding step is.
    # What a step's time has beyond these is its kernels' own work and memory round trips.
    one = torch.zeros(1, device=DEV)
    for chain in (1, 3):
        out[f"launch{chain}_us"] = graph_times(lambda chain=chain: [one.add_(1) for _ in range(chain)])["us"]
    return out


# ----------------------------------------------------------------------------------------------
# one decoding step: NSA and full attention


def table4_tokens(T: int) -> int:
    """KV tokens an NSA decoding step loads at context T, the paper's Table 4 model: (T - l)//d + n*l' + w."""
    s = NSA
    return max(0, (T - s["block_size"]) // s["stride"]) + s["num_select"] * s["select_size"] + s["window"]


def loaded_tokens(T: int) -> dict:
    """Keys (K and V rows) these decode kernels read per KV group at context T: visible compressed tokens
    (attention; the scoring re-reads their keys), the selected blocks' keys <= T-1, the window."""
    s = NSA
    tc = num_compressed_tokens(T, s["block_size"], s["stride"])
    blocks = min(s["num_select"], (T - 1) // s["select_size"] + 1)
    return {"cmp": tc, "select_keys_only": tc, "slc": min(blocks * s["select_size"], T), "win": min(s["window"], T)}


def make_cache(B: int, T: int, Hq: int, Hkv: int, D: int) -> dict:
    g = torch.Generator(device=DEV).manual_seed(T + B)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=DEV) * scale).to(torch.bfloat16)
    Tc = num_compressed_tokens(T, NSA["block_size"], NSA["stride"])
    return dict(q=r(B, 1, Hq, D, scale=2.0), k_cmp=r(B, Tc, Hkv, D), v_cmp=r(B, Tc, Hkv, D), k_slc=r(B, T, Hkv, D),
                v_slc=r(B, T, Hkv, D), k_win=r(B, T, Hkv, D), v_win=r(B, T, Hkv, D))


def nsa_ops(x: dict, T: int, cfg: dict | None = None, combine: str | None = None):
    """(cmp, select(lse), slc(idx), win, step) closures for one decoding step at position T - 1: through the
    public ops (as the model calls them), or with tile overrides / a combine mode through triton_decode."""
    from kernels import triton_decode as td
    m = kernels if cfg is None and combine is None else td
    kw = {} if m is kernels else dict(cfg=cfg, **({"combine": combine} if combine else {}))
    s, t, q = NSA, T - 1, x["q"]

    def cmp():
        return m.compressed_attention(q, x["k_cmp"], x["v_cmp"], block_size=s["block_size"], stride=s["stride"],
                                      q_start=t, **kw)

    def select(lse):
        return m.select_blocks(q, x["k_cmp"], lse, block_size=s["block_size"], stride=s["stride"],
                               select_size=s["select_size"], num_select=s["num_select"], q_start=t, **kw)

    def slc(idx):
        return m.selected_attention(q, x["k_slc"], x["v_slc"], idx, select_size=s["select_size"], q_start=t, **kw)

    def win():
        return m.window_attention(q, x["k_win"], x["v_win"], window=s["window"], q_start=t, **kw)

    def step():  # as model/attention/nsa.py runs it: the two ops that chain two, selected + window in one launch
        o_cmp, _, idx = m.compressed_attention_and_select(q, x["k_cmp"], x["v_cmp"], block_size=s["block_size"],
                                                          stride=s["stride"], select_size=s["select_size"],
                                                          num_select=s["num_select"], q_start=t, **kw)
        return (o_cmp, *m.selected_and_window_attention(q, x["k_slc"], x["v_slc"], idx, x["k_win"],
                                                        x["v_win"], select_size=s["select_size"],
                                                        window=s["window"], q_start=t, **kw), idx)

    def step_separate():  # the four ops, one launch each
        o_cmp, lse = cmp()
        return o_cmp, slc(select(lse)), win()
    return cmp, select, slc, win, step, step_separate


def nsa_step_at(x: dict, T: int):
    """The step as the model's graphed decoding runs it: the three *_at ops (kernels/triton_decode.py) with the
    position T - 1 in a device tensor, the caches sized for it."""
    from kernels import triton_decode as td
    s, q, pos = NSA, x["q"], torch.tensor([T - 1], device=DEV)
    sizes = dict(block_size=s["block_size"], stride=s["stride"])

    def step():
        o_cmp, _, idx = td.compressed_attention_and_select_at(q, x["k_cmp"], x["v_cmp"], pos, **sizes,
                                                              select_size=s["select_size"],
                                                              num_select=s["num_select"], max_pos=T - 1)
        return (o_cmp, *td.selected_and_window_attention_at(q, x["k_slc"], x["v_slc"], idx, x["k_win"], x["v_win"],
                                                            pos, select_size=s["select_size"], window=s["window"],
                                                            max_pos=T - 1))
    return step


def same_step(got, ref) -> dict:
    """How far a step's outputs (o_cmp, o_slc, o_win, idx) are from another's: the largest relative error of the
    three outputs, and whether the blocks agree."""
    err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got[:3], ref[:3]))
    return {"max_rel_err": err, "same_blocks": bool(torch.equal(got[3], ref[3]))}


def bench_nsa_step(x: dict, T: int, per_op: bool = True) -> dict:
    from kernels import triton_decode as td
    from kernels.triton_common import tiles_set

    cmp, select, slc, win, step, step_separate = nsa_ops(x, T)
    out = graph_times(step)
    # both ways of scoring the selection (the selection tiles' scores_from), each against the default's outputs
    ref = step()
    for mode in td.SCORES_FROM:
        with tiles_set(*td.DECODE_TILES["select"].values(), scores_from=mode):
            out[f"{mode}_us"] = graph_times(step)["us"]
            out[f"{mode}_check"] = same_step(step(), ref)
    out["at_us"] = graph_times(nsa_step_at(x, T))["us"]
    # with and without programmatic dependent launch (every decode kernel's tiles' pdl): "pdl" / "serial"
    for mode, on in (("serial", False), ("pdl", True)):
        with tiles_set(*td.DECODE_TILES["attn"].values(), *td.DECODE_TILES["select"].values(), pdl=on):
            out[f"{mode}_us"] = graph_times(step)["us"]
            out[f"{mode}_check"] = same_step(step(), ref)
            out[f"at_{mode}_us"] = graph_times(nsa_step_at(x, T))["us"]
    out["eager_us"] = eager_us(step)
    out["separate_us"] = graph_times(step_separate)["us"]
    out["fused_us"] = graph_times(nsa_ops(x, T, combine="fused")[4])["us"]
    if per_op:
        _, lse = cmp()
        idx = select(lse)
        for name, fn in (("cmp", cmp), ("select", lambda: select(lse)), ("slc", lambda: slc(idx)), ("win", win)):
            out[f"{name}_us"] = graph_times(fn)["us"]
    return out


def bench_full_step(x: dict) -> dict:
    """SDPA on the selection branch's cache (as full attention's own cache would be): each variant/backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = x["q"], x["k_slc"], x["v_slc"]
    B, _, Hq, D = q.shape
    Hkv = k.shape[2]
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # [B, Hkv, T, D] views of the BTHD cache
    variants = {
        "gqa": lambda: F.scaled_dot_product_attention(q.transpose(1, 2), kt, vt, enable_gqa=True),
        "folded": lambda: F.scaled_dot_product_attention(q.view(B, Hkv, Hq // Hkv, D), kt, vt),
    }
    backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    out = {}
    for vname, fn in variants.items():
        for bname, backend in backends.items():
            def run(fn=fn, backend=backend):
                if backend is None:
                    return fn()
                with sdpa_kernel([backend]):
                    return fn()
            try:
                out[f"{vname}_{bname}_us"] = graph_times(run)["us"]
            except Exception as e:  # a backend without a kernel for this case is a result, not a crash
                out[f"{vname}_{bname}_us"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    times = {k: v for k, v in out.items() if isinstance(v, float)}
    best = min(times, key=times.get)
    out["best"], out["us"] = best.removesuffix("_us"), times[best]
    return out


def bench_attn_point(shape: str, B: int, T: int, bw: dict | None) -> dict:
    Hq, Hkv, D = (SHAPES[shape][k] for k in ("Hq", "Hkv", "D"))
    x = make_cache(B, T, Hq, Hkv, D)
    row = {"nsa": bench_nsa_step(x, T), "full": bench_full_step(x)}
    row_bytes = B * Hkv * 2 * D * 2  # one token's K and V rows of every KV head, bf16
    nsa_b, full_b = table4_tokens(T) * row_bytes, T * row_bytes
    ld = loaded_tokens(T)
    loaded_b = (ld["cmp"] + ld["slc"] + ld["win"]) * row_bytes + ld["select_keys_only"] * row_bytes // 2
    row.update(table4_tokens=table4_tokens(T), full_tokens=T, loaded_tokens=ld, nsa_bytes=nsa_b, full_bytes=full_b,
               nsa_loaded_bytes=loaded_b, speedup=row["full"]["us"] / row["nsa"]["us"],
               table4_speedup=T / table4_tokens(T),
               nsa_GBps=nsa_b / row["nsa"]["us"] / 1e3, nsa_loaded_GBps=loaded_b / row["nsa"]["us"] / 1e3,
               full_GBps=full_b / row["full"]["us"] / 1e3)
    if bw:
        row["nsa_bw_fraction"] = row["nsa_GBps"] / bw["copy_GBps"]
        row["full_bw_fraction"] = row["full_GBps"] / bw["copy_GBps"]
    del x
    torch.cuda.empty_cache()
    return row


# ----------------------------------------------------------------------------------------------
# end-to-end generate()


def cache_bytes_per_token(caches: list, max_len: int) -> float:
    """Bytes of a model's decoding caches per token of capacity and per layer (distinct storages counted once)."""
    seen, total = set(), 0
    for c in caches:
        for t in vars(c).values():
            if isinstance(t, torch.Tensor) and t.data_ptr() not in seen and t.numel():
                seen.add(t.data_ptr())
                total += t.untyped_storage().nbytes()
    return total / max_len / len(caches)


def bench_generate(attn: str, T: int, B: int, new: int, n_layer: int = 12, cuda_graph: bool = False) -> dict:
    from model import GPT, AttentionConfig, ModelConfig

    cfg = ModelConfig(n_layer=n_layer, n_embd=768, n_head=16, n_kv_head=1, head_dim=64, vocab_size=8192,
                      max_seq_len=T + new, tie_embeddings=True)
    torch.manual_seed(0)
    with torch.device(DEV):
        model = GPT(cfg, AttentionConfig(name=attn)).to(torch.bfloat16).eval()
    prompt = torch.randint(0, 8192, (B, T), device=DEV)

    def run(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=n, cuda_graph=cuda_graph)
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out
    # Warm-up of each length: the caches' sizes follow max_new_tokens, and their strides pick new kernels or
    # cuDNN plans (a first call of a length paid up to 0.8 s more). Then the fastest of 3 of each.
    for n in (1, new // 2, new):
        run(n)
    t_one, t_half = (min(run(n)[0] for _ in range(3)) for n in (1, new // 2))
    timed = [run(new) for _ in range(3)]
    t_all, out = min(t for t, _ in timed), timed[-1][1]
    assert out.shape == (B, T + new)
    steps = new - new // 2  # the difference is that many decoding steps (with a graph: replays only)
    decode_s = t_all - t_half
    res = {"prefill_s": t_one, "generate_s": t_all, "decode_ms_per_step": decode_s / steps * 1e3,
           "decode_tok_s": B * steps / decode_s, "generate_tok_s": B * new / t_all,
           "cache_bytes_per_token_layer": cache_bytes_per_token(model.new_caches(1, 4096), 4096)}
    return res


# ----------------------------------------------------------------------------------------------
# sweep


def bench_sweep(T: int = 65536) -> dict:
    """NSA step (graph, cold L2) at T, B=1, main shape, for decode tile alternatives; each with how far its outputs
    are from the default's (same_step)."""
    from kernels import triton_decode as td
    x = make_cache(1, T, **SHAPES["main"])
    ref_out = nsa_ops(x, T)[4]()
    # the alternatives to DECODE_TILES' "small" entries (split_factor 1.0: the default again, for the noise)
    attn = [dict(split_factor=f) for f in (0.5, 1.0, 2.0)] + [dict(block_n=32), dict(warps=4), dict(stages=2)]
    attn += [dict(pdl=not td.DECODE_TILES["attn"]["small"]["pdl"])]
    # combine=fused: the selection's merge by the last of its splits to finish instead of a launch of its own
    select = [dict(tiles_per_split=t) for t in (1, 4, 8)] + [dict(warps=8), dict(combine="fused")]
    # scores_from=attention: the selection reads compressed attention's scores (no dot left in it: fewer, longer
    # splits may now pay), with the tiles per split and the merge alternatives again
    select += [dict(scores_from="attention", tiles_per_split=t) for t in (1, 2, 4, 8)]
    select += [dict(scores_from="attention", combine="fused")]
    select += [dict(pdl=not td.DECODE_TILES["select"]["small"]["pdl"])]
    res = {}
    from kernels.triton_common import tiles_set
    for kind, alternatives in (("attn", attn), ("select", select)):
        for alt in alternatives:
            name = f"{kind}:" + ",".join(f"{k}={v}" for k, v in alt.items())
            try:
                with tiles_set(td.DECODE_TILES[kind]["small"], **alt):
                    alt_step = nsa_ops(x, T)[4]
                    res[name] = {"us": graph_times(alt_step)["us"], **same_step(alt_step(), ref_out)}
            except Exception as e:
                res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            print(f"  sweep {name}: {res[name]}", flush=True)
    return res


# ----------------------------------------------------------------------------------------------


def save(results: dict, path: str | None) -> None:
    if path:
        write_text_atomic(path, json.dumps(results, indent=1))


def attempt(container: dict, key: str, fn, checkpoint, budget_s: float) -> None:
    """container[key] = fn(), or the error it raised, or a skip past the time budget; then checkpoint()."""
    if time.time() - START > budget_s:
        container[key] = {"skipped": f"time budget of {budget_s:.0f}s used up"}
    else:
        t0 = time.time()
        try:
            container[key] = fn()
        except Exception as e:
            container[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        torch.cuda.empty_cache()
        print(f"  {key}: {json.dumps(container[key])[:600]}  ({time.time() - t0:.1f}s)", flush=True)
    checkpoint()


def f(x, spec="8.1f"):
    return format(x, spec) if isinstance(x, (int, float)) else f"{'-':>8}"


def table(results: dict) -> str:
    lines = []
    bw = results.get("bandwidth", {})
    if "copy_GBps" in bw:
        lines.append(f"bandwidth: copy {bw['copy_GBps']:.0f} GB/s (read + write), read-only {bw['read_GBps']:.0f} GB/s"
                     + (f"; graph of 1 / 3 chained tiny kernels {bw['launch1_us']:.1f} / {bw['launch3_us']:.1f} us"
                        if "launch1_us" in bw else ""))
    if results.get("attn"):
        lines.append("\n[attn] one decoding step, us (CUDA graph, cold L2); full = best SDPA variant; x = full / NSA")
        lines.append(f"{'point':>16} | {'NSA':>8} {'keys':>8} {'scores':>8} {'serial':>8} {'pdl':>8} "
                     f"{'cmp':>7} {'sel':>7} {'slc':>7} "
                     f"{'win':>7} {'4 ops':>8} "
                     f"{'fused':>8} {'at':>7} "
                     f"{'eager':>8} | {'full':>8} {'best full':>18} | {'x':>6} {'T4 x':>6} | "
                     f"{'NSA GB/s':>8} {'%copy':>6}")
        for key, r in results["attn"].items():
            n, fu = r.get("nsa", {}), r.get("full", {})
            if "us" not in n:
                lines.append(f"{key:>16} | {json.dumps(r)[:100]}")
                continue
            lines.append(
                f"{key:>16} | {f(n['us'])} {f(n.get('keys_us'))} {f(n.get('attention_us'))} "
                f"{f(n.get('serial_us'))} {f(n.get('pdl_us'))} "
                f"{f(n.get('cmp_us'), '7.1f')} "
                f"{f(n.get('select_us'), '7.1f')} "
                f"{f(n.get('slc_us'), '7.1f')} {f(n.get('win_us'), '7.1f')} {f(n.get('separate_us'))} "
                f"{f(n.get('fused_us'))} {f(n.get('at_us'), '7.1f')} "
                f"{f(n.get('eager_us'))} | {f(fu.get('us'))} {fu.get('best', '-'):>18} | {f(r['speedup'], '6.2f')} "
                f"{f(r['table4_speedup'], '6.2f')} | "
                f"{f(r['nsa_GBps'], '8.0f')} {f(100 * r.get('nsa_bw_fraction', math.nan), '6.1f')}")
    if results.get("generate"):
        lines.append(f"\n[generate] small model ({results.get('gen_layers')} layers, Hq=16, Hkv=1, D=64): "
                     "decode tokens/s (ms per step)")
        for key, r in results["generate"].items():
            if "decode_tok_s" in r:
                lines.append(f"{key:>16} | {r['decode_tok_s']:9.1f} tok/s ({r['decode_ms_per_step']:.2f} ms/step) | "
                             f"prefill {r['prefill_s']:.2f}s | cache {r['cache_bytes_per_token_layer']:.0f} "
                             f"B/token/layer")
            else:
                lines.append(f"{key:>16} | {json.dumps(r)[:100]}")
    if results.get("sweep"):
        lines.append("\n[sweep] NSA step, B=1, main shape (us), T in the command")
        for key, r in results["sweep"].items():
            lines.append(f"{key:>28}: {json.dumps(r)}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", default=["bandwidth", "attn", "generate", "sweep"],
                   choices=["bandwidth", "attn", "generate", "sweep"])
    p.add_argument("--T", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--B", type=int, nargs="+", default=[1, 8])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--gen-T", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--gen-B", type=int, nargs="+", default=[1])
    p.add_argument("--gen-new", type=int, default=32, help="new tokens per eager generate() call")
    p.add_argument("--gen-new-graph", type=int, default=256,
                   help="new tokens per graphed generate() call: its steps are ~1 ms, so 32 of them are within the "
                        "jitter of the prefill and graph capture that the difference of two calls cancels")
    p.add_argument("--gen-layers", type=int, default=12, help="layers of the generate() model")
    p.add_argument("--sweep-T", type=int, default=65536, help="context of the sweep section")
    p.add_argument("--budget-s", type=float, default=1e9, help="start no new measurement after this many seconds")
    p.add_argument("--out", help="write results as JSON here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_decode.py needs a CUDA GPU")
    import triton
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "nsa_sizes": NSA, "shapes": SHAPES}

    def checkpoint():
        save(results, args.out)
    if "bandwidth" in args.sections:
        attempt(results, "bandwidth", bench_bandwidth, checkpoint, args.budget_s)
    bw = results.get("bandwidth") if "copy_GBps" in results.get("bandwidth", {}) else None
    if "attn" in args.sections:
        results["attn"] = {}
        for shape in args.shapes:
            for B in args.B:
                for T in args.T:
                    attempt(results["attn"], f"{shape}-B{B}-T{T // 1024}k",
                            lambda s=shape, B=B, T=T: bench_attn_point(s, B, T, bw), checkpoint, args.budget_s)
    if "generate" in args.sections:
        results["generate"], results["gen_layers"] = {}, args.gen_layers
        results["gen_new"], results["gen_new_graph"] = args.gen_new, args.gen_new_graph
        for B in args.gen_B:
            for T in args.gen_T:
                for attn in ("full", "nsa"):
                    for graph in (False, True):
                        attempt(results["generate"], f"{attn}{'-graph' if graph else ''}-B{B}-T{T // 1024}k",
                                lambda a=attn, T=T, B=B, g=graph: bench_generate(
                                    a, T, B, args.gen_new_graph if g else args.gen_new, args.gen_layers, g),
                                checkpoint, args.budget_s)
    if "sweep" in args.sections:
        attempt(results, "sweep", lambda: bench_sweep(args.sweep_T), checkpoint, args.budget_s)
    print(f"\n{results['device']}, torch {results['torch']}, triton {results['triton']}")
    print(table(results))


if __name__ == "__main__":
    main()
