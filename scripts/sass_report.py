"""Compile NSA's Triton kernels for Hopper (sm_90a) on a machine without a GPU, and count what they became.

    python scripts/sass_report.py select decode-attn          # the presets below
    python scripts/sass_report.py select --triton /tmp/t36    # with another Triton (pip install --target /tmp/t36
                                                              # triton==3.6.0: the lent GPU's version)
    python scripts/sass_report.py select --dump /tmp/sass     # also write each kernel's SASS there
    python scripts/sass_report.py all --against HEAD          # did my change of kernels/ change the machine code?

For each kernel: registers and spills (ptxas), shared memory, whether the loads of its loops were pipelined
(async copies in the TTGIR) and whether its dots became wgmma, the SASS instruction count, and the instructions
between each backward branch and its target (a loop's body, its inner branches included), with the most
frequent opcodes; and "RACE" where an async copy overwrites a one-slot buffer that a wgmma still in flight reads
(inflight_overwrites: what made the selected dK/dV wrong with 2 stages).
Counting instructions per loop trip is how the selection kernel's layout problem was found (docs/benchmarks.md,
"Eighth session on H200"); registers decide occupancy. The compile mirrors Triton's JIT: pointers and the
stride arguments named in the preset are marked 16-divisible, as the launcher specialises them, so loads
vectorise and pipeline as they do on the GPU. Needs Triton's bundled ptxas-blackwell (ptxas understands the
PTX version newer Tritons emit) and nvdisasm.

`--against REV` also builds the presets with `kernels/` as of git revision REV and says, kernel by kernel, whether
the two builds are identical byte for byte, have the same opcode counts in another order, or differ. Identical SASS
is what lets a refactor of kernel code stand on the GPU tests and timings of the code before it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_D128 = dict(DK=128, DV=128, BLOCK_DK=128, BLOCK_DV=128, ACC="fp32", PREC="tf32")  # bf16 heads of 128
_BAND = {**_D128, "G_PAD": 16, "BLOCK_N": 64}  # the banded kernels' shared constexprs
_SELECTED = {**_D128, "NSEL_PAD": 16, "BLOCK_N": 64, "N_KT": 1}  # the selected kernels' (16 blocks of 64 keys)
_QKV_STRIDES = ("sq_b", "sq_t", "sq_h", "sk_b", "sk_t", "sk_h", "sv_b", "sv_t", "sv_h")

# preset -> (module, kernel, pointer/float types, constexprs, 16-divisible int args, warps, stages); main shape
# (Hq=64, Hkv=4, D=128, bf16) with the paper's NSA sizes and the shipped "small" tiles (GPU_TILES; a test checks
# they agree), K/V gathered: the kernels that ship with TMA loads are the "-tma" presets below
PRESETS = {
    "select": ("kernels.triton_select", "_select_kernel",
               dict(Q="*bf16", KC="*bf16", LSE="*fp32", IDX="*i32", qk_scale="fp32"),
               dict(DK=128, BLOCK_DK=128, G_PAD=16, NPOS=8, NBT=16, TPB=4, C_PAD=64, ALIGNED=True, ACC="fp32",
                    PREC="tf32", TMA=False, WDOT=True),
               ("sq_b", "sq_t", "sq_h", "sk_b", "sk_t", "sk_h", "si_b", "si_t"), 4, 2),
    "band-fwd": ("kernels.triton_banded", "_band_fwd_kernel",
                 dict(Q="*bf16", K="*bf16", V="*bf16", OUT="*bf16", LSE="*fp32", qk_scale="fp32"),
                 {**_BAND, "NPOS": 4, "TMA": False}, (*_QKV_STRIDES, "so_b", "so_t", "so_h"), 4, 3),
    "band-dkdv": ("kernels.triton_banded", "_band_bwd_dkdv_kernel",
                  dict(Q="*bf16", K="*bf16", V="*bf16", DO="*bf16", LSE="*fp32", DELTA="*fp32", DK_OUT="*fp32",
                       DV_OUT="*fp32", sm_scale="fp32", qk_scale="fp32"),
                  {**_BAND, "NPOS": 8},
                  (*_QKV_STRIDES, "sdo_b", "sdo_t", "sdo_h"), 8, 2),
    "band-dq": ("kernels.triton_banded", "_band_bwd_dq_kernel",
                dict(Q="*bf16", K="*bf16", V="*bf16", DO="*bf16", LSE="*fp32", DELTA="*fp32", DQ="*bf16",
                     OUT="*bf16", DLSE="*fp32", sm_scale="fp32", qk_scale="fp32"),
                {**_BAND, "NPOS": 4, "TMA": False, "FUSED_DELTA": True, "HAS_DLSE": False},
                (*_QKV_STRIDES, "sdo_b", "sdo_t", "sdo_h", "sdq_b", "sdq_t", "sdq_h", "so_b", "so_t", "so_h"), 4, 2),
    "selected-fwd": ("kernels.triton_selected", "_selected_fwd_kernel",
                     dict(Q="*bf16", K="*bf16", V="*bf16", IDX="*i32", OUT="*bf16", LSE="*fp32", qk_scale="fp32"),
                     {**_SELECTED, "G_PAD": 16, "TMA": False},
                     ("sq_b", "sq_t", "sq_h", "sk_b", "sk_t", "sk_h", "sv_b", "sv_t", "sv_h", "so_b", "so_t", "so_h",
                      "si_b", "si_t"), 2, 3),
    "selected-dq": ("kernels.triton_selected", "_selected_bwd_dq_kernel",
                    dict(Q="*bf16", K="*bf16", V="*bf16", IDX="*i32", DO="*bf16", LSE="*fp32", DELTA="*fp32",
                         DQ="*bf16", DK_ACC="*fp32", DV_ACC="*fp32", OUT="*bf16", qk_scale="fp32", sm_scale="fp32"),
                    {**_SELECTED, "G_PAD": 16, "ATOMIC_DKDV": False, "TMA": False, "FUSED_DELTA": True},
                    (*_QKV_STRIDES, "sdo_b", "sdo_t", "sdo_h", "sdq_b", "sdq_t", "sdq_h", "si_b", "si_t",
                     "so_b", "so_t", "so_h"), 4, 2),
    # the packed forward and dQ at G = 2 (Hq=64, Hkv=32): 8 positions x 2 heads per program, as the launcher packs
    # small G
    "selected-fwd-shared": ("kernels.triton_selected", "_selected_fwd_shared_kernel",
                            dict(Q="*bf16", K="*bf16", V="*bf16", IDX="*i32", UNION="*i32", COUNT="*i32", OUT="*bf16",
                                 LSE="*fp32", qk_scale="fp32"),
                            {**_SELECTED, "G_PAD": 2, "P": 8},
                            (*_QKV_STRIDES, "so_b", "so_t", "so_h", "si_b", "si_t"), 8, 3),
    "selected-dq-shared": ("kernels.triton_selected", "_selected_bwd_dq_shared_kernel",
                           dict(Q="*bf16", K="*bf16", V="*bf16", IDX="*i32", UNION="*i32", COUNT="*i32", DO="*bf16",
                                LSE="*fp32", DELTA="*fp32", DQ="*bf16", qk_scale="fp32", sm_scale="fp32"),
                           {**_SELECTED, "G_PAD": 2, "P": 8},
                           (*_QKV_STRIDES, "sdo_b", "sdo_t", "sdo_h", "sdq_b", "sdq_t", "sdq_h", "si_b", "si_t"),
                           8, 2),
    "selected-dkdv": ("kernels.triton_selected", "_selected_bwd_dkdv_kernel",
                      dict(Q="*bf16", K="*bf16", V="*bf16", DO="*bf16", LSE="*fp32", DELTA="*fp32", POS="*i32",
                           BUCKET_OFF="*i64", ITEM_BUCKET="*i32", ITEM_SEG="*i32", DK_ACC="*fp32", DV_ACC="*fp32",
                           qk_scale="fp32", sm_scale="fp32"),
                      {**_D128, "G_PAD": 16, "NPOS": 2, "BLOCK_N": 64, "N_KT": 1, "KEY_MAJOR": True},
                      (*_QKV_STRIDES, "sdo_b", "sdo_t", "sdo_h"), 4, 2),
    "decode-attn": ("kernels.triton_decode", "_decode_attn_kernel",
                    dict(Q="*bf16", K="*bf16", V="*bf16", IDX="*i32", OUT="*bf16", LSE="*fp32", PM="*fp32",
                         PL="*fp32", PACC="*fp32", COUNT="*i32", TP="*i64", RAW="*fp32", qk_scale="fp32"),
                    dict(DK=128, DV=128, BLOCK_DK=128, BLOCK_DV=128, G_PAD=16, ACC="fp32", PREC="tf32",
                         SELECTED=False, SPLIT=True, FUSED=False, WRITE_LSE=True, BLOCK_N=64, N_KT=1, NSEL_PAD=2,
                         S_PAD=16, DV_CHUNK=32, T_DEV=True, SCORES=False, PDL=False),
                    ("sq_b", "sq_h", "sk_b", "sk_t", "sk_h", "sv_b", "sv_t", "sv_h", "so_b", "so_h"), 8, 3),
    "decode-combine": ("kernels.triton_decode", "_attn_combine_kernel",
                       dict(PM="*fp32", PL="*fp32", PACC="*fp32", OUT="*bf16", LSE="*fp32", PM2="*fp32",
                            PL2="*fp32", PACC2="*fp32", OUT2="*bf16"),
                       dict(DV=128, BLOCK_DV=128, G_PAD=16, WRITE_LSE=True, ACC="fp32", S_PAD=16, DV_CHUNK=16,
                            S_PAD2=8, DV_CHUNK2=16, PDL=False),
                       ("so_b", "so_h", "so_b2", "so_h2"), 4, 1),
    "decode-select": ("kernels.triton_decode", "_select_decode_kernel",
                      dict(Q="*bf16", KC="*bf16", LSE="*fp32", IDX="*i32", PKEY="*i64", COUNT="*i32", TP="*i64",
                           RAW="*fp32", PM="*fp32", PL="*fp32", PACC="*fp32", OUT="*bf16", qk_scale="fp32"),
                      dict(SPLIT=True, FUSED=False, MULTI_TILE=True, T_DEV=True, DK=128, BLOCK_DK=128, G_PAD=16,
                           NBT=16, NBV=16, TPB=4, SPILL=1, C_PAD=128, S_LOG2=6, ACC="fp32", PREC="tf32",
                           FROM_SCORES=False, LSE_FROM_STATES=False, CMP_S_PAD=2, N_COMBINE=0, DV=128,
                           BLOCK_DV=128, DV_CHUNK=128, PDL=False),
                      ("sq_b", "sq_h", "sk_b", "sk_t", "sk_h", "si_b", "si_h"), 4, 2),
    "decode-select-merge": ("kernels.triton_decode", "_select_merge_kernel", dict(PKEY="*i64", IDX="*i32"),
                            dict(NBT=16, S_LOG2=6, PDL=False), ("si_b", "si_h"), 4, 1),
}

# the decode step with scores_from="attention": compressed attention also storing its scores, the selection reading
# them (alone, after a combine inside the attention launch), and the selection beside compressed attention's combine
_da, _ds = PRESETS["decode-attn"], PRESETS["decode-select"]
PRESETS["decode-attn-scores"] = (*_da[:3], {**_da[3], "SCORES": True}, *_da[4:])
PRESETS["decode-select-scores"] = (*_ds[:3], {**_ds[3], "FROM_SCORES": True}, *_ds[4:])
PRESETS["decode-combine-select"] = (*_ds[:3], {**_ds[3], "FROM_SCORES": True, "LSE_FROM_STATES": True, "CMP_S_PAD": 16,
                                               "DV_CHUNK": 16, "N_COMBINE": 8}, (*_ds[4], "so_b", "so_h"), *_ds[5:])
# the decode step's kernels as launched with programmatic dependent launch (tiles' pdl: _chain_start's wait first)
for _name in ("decode-attn-scores", "decode-combine-select", "decode-select-merge", "decode-combine"):
    _module, _kernel, _types, _consts, *_rest = PRESETS[_name]
    PRESETS[f"{_name}-pdl"] = (_module, _kernel, _types, {**_consts, "PDL": True}, *_rest)

# the same kernels with TMA loads (tiles option tma=1): the named tensors become tensor descriptors read in boxes of
# 64 rows of 128 (K/V tiles of 64 keys; the selection's C_PAD = 64 compressed tokens), their stride arguments unused
_TMA_DESC = "tensordesc<bf16[1, 64, 1, 128]>"
for _name, _loaded in (("band-fwd", "KV"), ("band-dq", "KV"), ("selected-fwd", "KV"), ("selected-dq", "KV"),
                       ("select", ("KC",))):
    _module, _kernel, _types, _consts, _div16, _warps, _stages = PRESETS[_name]
    PRESETS[f"{_name}-tma"] = (_module, _kernel, {**_types, **dict.fromkeys(_loaded, _TMA_DESC)},
                               {**_consts, "TMA": True}, _div16, _warps, _stages)

# the selection without the tile option wdot (shipped since the twenty-second session: each head's block scores as
# a product, then the head sum), i.e. the head sum first; and both at the small training model's heads of 64
_sel = PRESETS["select"]
PRESETS["select-no-wdot"] = (*_sel[:3], {**_sel[3], "WDOT": False}, *_sel[4:])
PRESETS["select-d64"] = (*_sel[:3], {**_sel[3], "DK": 64, "BLOCK_DK": 64}, *_sel[4:])
PRESETS["select-d64-no-wdot"] = (*_sel[:3], {**_sel[3], "DK": 64, "BLOCK_DK": 64, "WDOT": False}, *_sel[4:])

# the banded dK/dV at the small training model's heads of 64 (configs/model/small_gqa16.yaml: G = 16, the "d64"
# tiles are "small"'s: 128 rows, 64 keys, 8 warps, 2 stages)
_band = PRESETS["band-dkdv"]
_D64 = dict(DK=64, DV=64, BLOCK_DK=64, BLOCK_DV=64)
PRESETS["band-dkdv-d64"] = (*_band[:3], {**_band[3], **_D64}, *_band[4:])

# the dQ kernels at the small training model's heads (the "d64" tiles: banded 128 rows, 8 warps, gathers; selected
# 2 warps, 3 stages), and the same leaving the row term delta to a pass of its own (tiles option fused_delta=0,
# what shipped before the twenty-second session)
_bdq, _sdq = PRESETS["band-dq"], PRESETS["selected-dq"]
PRESETS["band-dq-d64"] = (*_bdq[:3], {**_bdq[3], **_D64, "NPOS": 8}, _bdq[4], 8, _bdq[6])
PRESETS["band-dq-d64-separate-delta"] = (*_bdq[:3], {**_bdq[3], **_D64, "NPOS": 8, "FUSED_DELTA": False}, _bdq[4],
                                         8, _bdq[6])
PRESETS["selected-dq-d64"] = (*_sdq[:3], {**_sdq[3], **_D64}, _sdq[4], 2, 3)
PRESETS["selected-dq-d64-separate-delta"] = (*_sdq[:3], {**_sdq[3], **_D64, "FUSED_DELTA": False}, _sdq[4], 2, 3)

# the selected dK/dV row-major (tiles option key_major=0) at 1 stage: what shipped before the key-major products
# (pipelined, this layout races: kernels/triton_common.py GPU_TILES["selected_dkdv"])
_dkdv = PRESETS["selected-dkdv"]
PRESETS["selected-dkdv-row-major"] = (*_dkdv[:3], {**_dkdv[3], "KEY_MAJOR": False}, _dkdv[4], 4, 1)


def compile_preset(name: str):
    """The compiled kernel of a preset (triton.compile's result: .asm holds "ttgir", "ptx", ...)."""
    import importlib

    module, kernel, types, consts, div16, warps, stages = PRESETS[name]
    return compile_kernel(getattr(importlib.import_module(module), kernel), types, consts, div16, warps, stages)


def compile_kernel(fn, types: dict[str, str], consts: dict, div16, warps: int, stages: int):
    """fn (a @triton.jit kernel) compiled for sm_90a: parameters typed by `types` (default i32), fixed by `consts`
    ("fp32" means tl.float32), marked 16-divisible where pointers or named in div16."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # an older kernels/ (--against) may lack a constexpr the preset sets; built without it, a parameter that a later
    # commit added with its old behaviour as the default compares as it should
    consts = {k: (tl.float32 if v == "fp32" else v) for k, v in consts.items() if k in fn.arg_names}
    # a constexpr the preset leaves unset takes the kernel's default, as the launcher's JIT would; one without a
    # default (an option an older kernels/ had and a later commit removed, keeping its off state) is built as 0.
    # Left out, it would compile as a runtime integer, with both of its branches, and never compare as identical.
    for p in fn.params:
        if p.is_constexpr and p.name not in consts:
            consts[p.name] = p.default if p.has_default else 0
            if not p.has_default:
                print(f"  note: {fn.__name__}: constexpr {p.name} not set by the preset, built as 0", file=sys.stderr)
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in fn.arg_names
             if n not in consts and (sig[n].startswith("*") or n in div16)}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def ptxas_and_sass(ptx: str) -> tuple[str, str]:
    """(ptxas -v's resource lines, nvdisasm's SASS) of a PTX module, for sm_90a."""
    with tempfile.TemporaryDirectory() as d:
        src, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        Path(src).write_text(ptx)
        res = subprocess.run([tool("ptxas-blackwell"), "-arch=sm_90a", "-v", src, "-o", cubin],
                             capture_output=True, text=True, check=True)
        sass = subprocess.run([tool("nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True).stdout
    used = [line.split("info    :")[-1].strip() for line in res.stderr.splitlines()
            if "Used" in line or "spill" in line]
    return "; ".join(used), sass


INSTR = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")
LABEL = re.compile(r"^(\.L_x_\d+):")
BRANCH = re.compile(r"BRA(?:\.\w+)?\s+(?:U?P\w+,\s*)?`\((\.L_x_\d+)\)")


def loops(sass: str) -> list[tuple[int, collections.Counter]]:
    """(instructions, opcode counts) between each backward branch and the label it jumps to, in code order (the
    one-instruction self-loop that ends every kernel left out)."""
    lines = sass.splitlines()
    where = {m.group(1): i for i, line in enumerate(lines) if (m := LABEL.match(line))}
    out = []
    for i, line in enumerate(lines):
        m = BRANCH.search(line)
        if m and m.group(1) in where and where[m.group(1)] < i:
            ops = collections.Counter(o.group(1) for body in lines[where[m.group(1)]:i + 1] if (o := INSTR.match(body)))
            if sum(ops.values()) > 1:
                out.append((sum(ops.values()), ops))
    return out


_SINGLE_BUFFER = re.compile(r"(%[\w.]+) = ttg.local_alloc : \(\) -> !ttg.memdesc<1x[^>]*mutable>")
_VIEW = re.compile(r"(%[\w.]+) = ttg.memdesc_(?:index|subslice) (%[\w.]+)\[")
_COPY_INTO = re.compile(r"ttg.async_copy_global_to_local [^,]+, (%[\w.]+)")
_PENDING_DOT = re.compile(r"ttng.warp_group_dot_wait (.*?) \{pendings = ([1-9]\d*)")


def inflight_overwrites(ttgir: str) -> list[str]:
    """Shared-memory buffers of one slot that an async copy writes while a wgmma reading them may still be in
    flight: the buffer is an operand of a warp_group_dot_wait that leaves dots pending (pendings > 0), and an
    async_copy_global_to_local targets it. One slot means the copy of the next rows lands where the pending dot
    reads (a race: the selected dK/dV kernel's wrong dK, twelfth session). A text heuristic over the TTGIR: it
    does not look at which loop each op is in."""
    views = {m.group(1): m.group(2) for m in _VIEW.finditer(ttgir)}

    def root(v: str) -> str:
        while v in views:
            v = views[v]
        return v

    single = {m.group(1) for m in _SINGLE_BUFFER.finditer(ttgir)}
    copied = {root(m.group(1)) for m in _COPY_INTO.finditer(ttgir)}
    read = {root(op.split("#")[0]) for m in _PENDING_DOT.finditer(ttgir) for op in re.findall(r"%[\w.#]+", m.group(1))}
    return sorted(single & copied & read)


def report(name: str, dump: str | None) -> str:
    k = compile_preset(name)
    resources, sass = ptxas_and_sass(k.asm["ptx"])
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        Path(dump, f"{name}.sass").write_text(sass)
    ttgir = k.asm["ttgir"]
    total = sum(1 for line in sass.splitlines() if INSTR.match(line))
    lines = [f"{name}: {resources}; shared memory {k.metadata.shared} bytes",
             f"  async copies {ttgir.count('async_copy_global_to_local')}, wgmma {ttgir.count('warp_group_dot ')}, "
             f"SASS instructions {total}"]
    if hazards := inflight_overwrites(ttgir):
        lines.append("  RACE: async copies overwrite one-slot buffers that pending wgmmas read: " + ", ".join(hazards))
    for n, ops in loops(sass):
        lines.append(f"  loop of {n}: " + ", ".join(f"{op} {c}" for op, c in ops.most_common(8)))
    return "\n".join(lines)


def opcodes(sass: str) -> collections.Counter:
    """How many instructions of each opcode (its first part: IMAD.WIDE counts as IMAD) a SASS listing holds."""
    return collections.Counter(m.group(1) for line in sass.splitlines() if (m := INSTR.match(line)))


def compare_sass(old: str, new: str) -> str:
    """One line on how two builds of a kernel differ: identical, the same opcode counts (other order or registers),
    or the instruction totals and the opcodes whose counts changed most."""
    if old == new:
        return "identical"
    a, b = opcodes(old), opcodes(new)
    if a == b:
        return "same opcode counts, other order or registers"
    changed = sorted((op for op in set(a) | set(b) if a[op] != b[op]), key=lambda op: (-abs(b[op] - a[op]), op))[:6]
    return (f"differs: {sum(a.values())} -> {sum(b.values())} instructions ("
            + ", ".join(f"{op} {b[op] - a[op]:+d}" for op in changed) + ")")


def build_at(rev: str, presets: list[str], dump: str, triton_dir: str | None) -> None:
    """Write the presets' SASS to dump, built in a fresh interpreter from kernels/ as of git revision rev."""
    with tempfile.TemporaryDirectory() as root:
        archive = subprocess.run(["git", "archive", rev, "kernels"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
        cmd = [sys.executable, __file__, *presets, "--dump", dump, "--kernels-root", root]
        subprocess.run(cmd + (["--triton", triton_dir] if triton_dir else []), check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("presets", nargs="+", choices=sorted(PRESETS) + ["all"])
    p.add_argument("--triton", help="a folder holding another Triton package, put first on the import path")
    p.add_argument("--dump", help="write each kernel's SASS to this folder")
    p.add_argument("--against", metavar="REV", help="also build kernels/ of this git revision and compare")
    p.add_argument("--kernels-root", help=argparse.SUPPRESS)  # a folder holding another kernels/ (for --against)
    args = p.parse_args()
    presets = sorted(PRESETS) if "all" in args.presets else args.presets
    for path in (args.kernels_root, args.triton):
        if path:
            sys.path.insert(0, path)
    import triton

    print(f"triton {triton.__version__}, sm_90a")
    with tempfile.TemporaryDirectory() as tmp:
        dump = args.dump or (os.path.join(tmp, "new") if args.against else None)
        for name in presets:
            try:
                print(report(name, dump), flush=True)
            except Exception:  # an older kernels/ (--against) may lack this kernel or an option the preset needs
                if not args.kernels_root:
                    raise
        if args.against:
            old = os.path.join(tmp, "old")
            build_at(args.against, presets, old, args.triton)
            print(f"\nagainst {args.against}:")
            for name in presets:
                before = Path(old, f"{name}.sass")
                print(f"  {name}: " + (compare_sass(before.read_text(), Path(dump, f"{name}.sass").read_text())
                                       if before.exists() else f"does not build at {args.against}"))


if __name__ == "__main__":
    main()
