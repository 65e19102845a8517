"""The benchmark and profiling scripts' parts that run without a GPU: bench_attention.py's floors (FLOPs and unavoidable
bytes per NSA kernel) and tile alternatives, profile_kernels.py's helpers, sass_report.py's offline Hopper build."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench_attention as ba  # noqa: E402


def test_kernel_floors_count_the_keys_each_query_attends():
    """T = 64 with the paper's sizes (l=32, d=16, l'=64, n=16, w=512), by hand: compressed tokens visible per
    position are 0 (t < 31), 1 (t = 31..46), 2 (t = 47..62), 3 (t = 63), 51 in all; the window and the one
    selected block both give t + 1 keys, 2080 in all."""
    Hq, Hkv, D = 64, 4, 128
    f = ba.kernel_floors(64, Hq, Hkv, D)
    assert f["cmp"]["fwd_flops"] == 4 * D * Hq * 51
    assert f["select"]["fwd_flops"] == 2 * D * Hq * 51
    assert f["slc"]["fwd_flops"] == f["win"]["fwd_flops"] == 4 * D * Hq * 2080
    assert f["slc"]["fwdbwd_flops"] == 3.5 * f["slc"]["fwd_flops"]
    q = 64 * Hq * D * 2
    kv = 2 * 64 * Hkv * D * 2
    lse = 64 * Hq * 4
    assert f["win"]["fwd_bytes"] == q + kv + q + lse  # q, k, v in; o, lse out
    assert f["win"]["fwdbwd_bytes"] == 2 * (q + kv + q + lse) + q + (q + kv)  # + do, + dq/dk/dv
    assert f["slc"]["loads"] == 2 * D * 2 * Hkv * 2080


def test_floors_table_from_a_results_file_needs_no_gpu(tmp_path):
    results = {"device": "FakeGPU", "main": {"8192": {"nsa": {"cmp_fwd": 1.0, "slc_fwdbwd": 9.0}}},
               "peak": {"matmul_tflops": 500.0, "read_GBps": 2000.0}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(results))
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_attention.py"), "--floors-from", str(path)],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert "measured on FakeGPU: 500 TFLOP/s dense bf16, 2000 GB/s" in out
    rows = [line for line in out.splitlines() if line.strip().startswith("8192")]
    assert len(rows) == 2 and "cmp fwd" in rows[0] and "slc fwdbwd" in rows[1]
    f = ba.kernel_floors(8192, 64, 4, 128)["cmp"]
    floor = max(f["fwd_flops"] / 500e9, f["fwd_bytes"] / 2000e6)  # ms
    assert float(rows[0].split("|")[2].split()[0]) == pytest.approx(floor, abs=1e-3)
    assert ba.peak_of(results, 900.0, None) == (900.0, 2000.0, "given / measured on FakeGPU")  # given wins
    assert ba.peak_of({}, None, None)[:2] == (ba.H100_DENSE_BF16_TFLOPS, ba.H100_READ_GBPS)


def test_compressed_backends_table_gives_speedups_and_errors():
    results = {"compressed": {"main-65536": {
        "triton": {"fwd": 10.0, "fwdbwd": 40.0}, "cudnn": {"fwd": 8.0, "fwdbwd": 20.0, "err": 4e-3},
        "cudnn-broadcast": {"error": "RuntimeError: no kernel"}}}}
    lines = [line for line in ba.table(results).splitlines() if line.strip().startswith("main-65536")]
    assert len(lines) == 3 and "err" not in lines[0]
    assert "x  1.25  2.00" in lines[1] and "err 4.0e-03" in lines[1]
    assert "no kernel" in lines[2]


def test_compressed_backends_section_runs_every_variant(monkeypatch):
    """The section's bookkeeping on CPU: float64 inputs make every cuDNN variant fall back to the chunked path
    (kernels/cudnn_compressed.py supports half precision on CUDA only), so all agree with "triton" exactly."""
    import torch

    from kernels import cudnn_compressed, ops

    def cpu_inputs(B, T, Hq, Hkv, Dk, Dv, *, grad):
        Tc = ba.num_compressed_tokens(T, ba.NSA["block_size"], ba.NSA["stride"])
        return {name: torch.randn(*shape, dtype=torch.float64).requires_grad_(grad) for name, shape in
                {"q": (B, T, Hq, Dk), "k_cmp": (B, Tc, Hkv, Dk), "v_cmp": (B, Tc, Hkv, Dv)}.items()}
    monkeypatch.setattr(ba, "make_inputs", cpu_inputs)
    monkeypatch.setattr(ba, "timed", lambda fn: (fn(), 1.5)[1])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    saved = ops.COMPRESSED_BACKEND, cudnn_compressed.KV_LAYOUT
    res = ba.bench_compressed_backends(1, 100, 4, 2, 8, 8)
    assert list(res) == ["triton", "cudnn", "cudnn-broadcast", "cudnn-copied"]
    assert res["triton"] == {"fwd": 1.5, "fwdbwd": 1.5}
    assert all(res[k]["err"] == 0.0 for k in list(res)[1:])
    assert (ops.COMPRESSED_BACKEND, cudnn_compressed.KV_LAYOUT) == saved  # restored


def test_tiles_set_restores_the_entries_even_after_an_error():
    """The benchmarks try tile alternatives inside kernels.triton_common.tiles_set: the entries take the updates
    within the block and hold exactly their old contents afterwards (a key the block added is gone)."""
    from kernels.triton_common import tiles_set

    a, b = dict(warps=4, share=1), dict(warps=4)
    with tiles_set(a, b, share=4, pack_below_g=0):
        assert a == dict(warps=4, share=4, pack_below_g=0) and b == dict(warps=4, share=4, pack_below_g=0)
    assert a == dict(warps=4, share=1) and b == dict(warps=4)
    with pytest.raises(RuntimeError), tiles_set(a, warps=8):
        raise RuntimeError("out of shared memory")
    assert a == dict(warps=4, share=1)


def test_gpu_tiles_by_head_dim():
    """Head dims up to 64 take "small" with the "d64" entry's changes, up to 128 "small", past it "big"; a "d64"
    entry changes only the values it names, so the kernels' other options (and tests patching "small") apply."""
    from kernels.triton_common import GPU_TILES, gpu_tiles, tiles_set

    small, d64, big = (GPU_TILES["selected_fwd"][size] for size in ("small", "d64", "big"))
    assert gpu_tiles("selected_fwd", 128) is small and gpu_tiles("selected_fwd", 256) is big
    assert d64 and gpu_tiles("selected_fwd", 64) == {**small, **d64} != small
    with tiles_set(small, share=4):
        assert gpu_tiles("selected_fwd", 32)["share"] == 4
    assert "d64" not in GPU_TILES["select"] and gpu_tiles("select", 64) == GPU_TILES["select"]["small"]
    for kernel, sizes in GPU_TILES.items():  # a d64 entry names only options "small" has
        assert set(sizes.get("d64", {})) <= set(sizes["small"]), kernel


def test_tiles_file_can_add_a_d64_entry(tmp_path):
    """NSA_TRITON_TILES (what the tune section's --tiles-out writes) may name a "d64" entry that GPU_TILES lacks."""
    tiles = tmp_path / "tiles.json"
    tiles.write_text(json.dumps({"band_fwd": {"d64": {"warps": 8}}, "select": {"small": {"rows": 64}}}))
    code = ("from kernels.triton_common import gpu_tiles as t; "
            "print(t('band_fwd', 64)['warps'], t('band_fwd', 128)['warps'], t('select', 64)['rows'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "NSA_TRITON_TILES": str(tiles)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["8", "4", "64"]


def test_tune_alternatives_name_existing_tile_options():
    """Every alternative of the tune section sets options its kernel's tiles have (a misspelt key would time
    the default again under another name), and --tune-kernels accepts exactly the tuned kernels."""
    from kernels.triton_common import GPU_TILES

    for kernel, alternatives in ba.TUNE.items():
        known = set(GPU_TILES[kernel]["small"])
        for alt in alternatives:
            assert set(alt) <= known, f"{kernel}: {sorted(set(alt) - known)} not in GPU_TILES"
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_attention.py"), "--tune-kernels", "nope"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_tune_never_tries_a_racy_selected_dkdv():
    """The selected dK/dV pipelined (stages > 1) is right only where every product is a wgmma: key-major with 64-key
    steps, or row-major at 64 rows (GPU_TILES["selected_dkdv"]). The tune section applies its alternatives to the
    shipped entry of the tuned head dim (key-major "small" and "d64", row-major "big"): none may land elsewhere, or
    the greedy search could ship a race that happened to repeat in its two runs."""
    from kernels.triton_common import GPU_TILES, gpu_tiles

    for block_d in (64, 128, 256):
        base = gpu_tiles("selected_dkdv", block_d)
        for alt in [{}, *ba.TUNE["selected_dkdv"]]:
            cfg = {**base, **alt}
            if cfg["stages"] > 1 and not cfg["atomic"]:
                wgmma_only = (cfg["block_n"] == 64) if cfg["key_major"] else (cfg["rows"] == 64)
                assert wgmma_only, (block_d, alt, cfg)
    assert GPU_TILES["selected_dkdv"]["big"]["key_major"] == 0  # the row-major base this test covers
    assert set(ba.HEAD_SHAPES) == {"main", "small", "paper"} and ba.HEAD_SHAPES["paper"][2:] == (192, 128)


def test_profile_kernels_script_imports_the_benchmarks_it_drives():
    """scripts/profile_kernels.py (run under Nsight Compute on the GPU) builds its workloads from the two benchmark
    scripts' helpers: its help must come up on CPU, naming every workload, so a renamed helper fails here."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "profile_kernels.py"), "--help"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "{decode,forward,backward}" in out.stdout
    import profile_kernels as pk

    for helper in (pk.bench_decode.make_cache, pk.bench_decode.nsa_step_at, pk.bench_attention.make_inputs,
                   pk.bench_attention.nsa_workloads):
        assert callable(helper)


def test_sass_report_presets_match_their_kernels_signatures():
    """Each sass_report.py preset types, fixes or marks 16-divisible only parameters its kernel has, and fixes every
    constexpr parameter, so a kernel argument renamed or added fails here rather than in the next offline build."""
    import importlib
    import inspect

    import sass_report

    for name, (module, kernel, types, consts, div16, _warps, _stages) in sass_report.PRESETS.items():
        fn = getattr(importlib.import_module(module), kernel)
        params = inspect.signature(fn.fn).parameters
        constexprs = {n for n, p in params.items() if "constexpr" in str(p.annotation)}
        assert set(types) | set(div16) <= set(params) - constexprs, (name, (set(types) | set(div16)) - set(params))
        assert set(consts) == constexprs, (name, set(consts) ^ constexprs)


def test_sass_report_compiles_a_decode_kernel_for_hopper_without_a_gpu():
    """scripts/sass_report.py builds a kernel for sm_90a here (no GPU) and counts its SASS: the decode attention
    kernel's key loop must come out pipelined (async copies) with a loop body of real size."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "sass_report.py"), "decode-attn"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    copies = int(re.search(r"async copies (\d+)", out.stdout).group(1))
    loop_sizes = [int(n) for n in re.findall(r"loop of (\d+):", out.stdout)]
    assert "registers" in out.stdout and copies > 0 and loop_sizes and max(loop_sizes) > 50, out.stdout


def test_sass_compare_tells_identical_reordered_and_changed_builds():
    """sass_report.py --against's verdict per kernel: byte-identical, the same opcodes in another order, or changed
    (with the opcodes whose counts moved)."""
    import sass_report

    imad = "        /*0000*/                   IMAD R1, R2, R3, R4 ;"
    ldg = "        /*0010*/                   @P0 LDG.E R5, desc[UR4][R2.64] ;"
    stl = "        /*0020*/                   STL [R1], R5 ;"
    base = "\n".join([imad, ldg])
    assert sass_report.compare_sass(base, base) == "identical"
    assert sass_report.compare_sass(base, "\n".join([ldg, imad])) == "same opcode counts, other order or registers"
    assert sass_report.compare_sass(base, "\n".join([imad, ldg, stl])) == "differs: 2 -> 3 instructions (STL +1)"


def test_sass_report_builds_the_kernels_of_a_git_revision(tmp_path, monkeypatch):
    """--against's build: kernels/ of a revision, exported and compiled in a fresh interpreter (twice here, from
    HEAD), gives a real SASS listing, the same both times."""
    import sass_report

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for out in ("a", "b"):
        sass_report.build_at("HEAD", ["decode-select-merge"], str(tmp_path / out), None)
    a, b = ((tmp_path / out / "decode-select-merge.sass").read_text() for out in ("a", "b"))
    assert sum(sass_report.opcodes(a).values()) > 100
    assert sass_report.compare_sass(a, b) == "identical"


def test_ab_tiles_runs_each_variant_with_its_tiles_round_robin(tmp_path, monkeypatch, capsys):
    """scripts/ab_tiles.py: every variant runs once per round, in order, with its own tiles in NSA_TRITON_TILES
    (none for a bare name), and the table gives each variant's range over its runs; a bad variant is refused."""
    import ab_tiles

    fake = tmp_path / "fake_bench.py"  # stands in for bench_attention.py: its time depends on the tiles it got
    fake.write_text(
        "import json, os, sys\n"
        "out = sys.argv[sys.argv.index('--out') + 1]\n"
        "tiles = json.load(open(os.environ['NSA_TRITON_TILES'])) if 'NSA_TRITON_TILES' in os.environ else {}\n"
        "log = os.environ['AB_LOG']\n"
        "n = sum(1 for _ in open(log)) if os.path.exists(log) else 0\n"
        "open(log, 'a').write(json.dumps([sys.argv[3:], tiles]) + '\\n')\n"
        "ms = (2.0 if tiles else 3.0) + 0.05 * n\n"
        "nsa = {'slc_fwd': ms, 'peak_fwdbwd_mib': 9.0, 'keys_per_query_last': 7}\n"
        "json.dump({'device': 'x', 'main': {'8192': {'nsa': nsa}}}, open(out, 'w'))\n")
    monkeypatch.setitem(ab_tiles.BENCHES, "attention", (fake, ab_tiles.nsa_times))
    monkeypatch.setenv("AB_LOG", str(tmp_path / "runs.log"))
    monkeypatch.setenv("NSA_TRITON_TILES", "/nonexistent.json")  # an outer override must not leak into a variant
    tma = {"selected_fwd": {"small": {"tma": 1}}}
    monkeypatch.setattr(sys, "argv", ["ab_tiles.py", "--runs", "2", "--out-dir", str(tmp_path / "ab"),
                                      "--variant", "default", "--variant", f"tma={json.dumps(tma)}",
                                      "--", "--sections", "main"])
    ab_tiles.main()
    runs = [json.loads(line) for line in (tmp_path / "runs.log").read_text().splitlines()]
    assert [r[1] for r in runs] == [{}, tma, {}, tma]
    assert all(r[0] == ["--sections", "main"] for r in runs)
    text = (tmp_path / "ab" / "ab.txt").read_text()
    assert text in capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("main 8192 slc_fwd"))
    assert line.split("|")[1].strip() == "3.000-3.100" and line.split("|")[2].strip() == "2.050-2.150"
    assert "keys_per_query" not in text and "mib" not in text
    with pytest.raises(SystemExit, match="JSON does not parse"):
        ab_tiles.parse_variant("x={oops")


def test_ab_tiles_times_training_runs(tmp_path, monkeypatch, capsys):
    """scripts/ab_tiles.py --bench train: bench_train.py gets --out before its own arguments (its Hydra overrides
    follow a second `--`), and the table gives step time and tokens/s per variant."""
    import ab_tiles

    fake = tmp_path / "fake_train.py"  # stands in for bench_train.py
    fake.write_text(
        "import json, os, sys\n"
        "assert sys.argv[1] == '--out' and sys.argv[3:] == ['--steps', '2', '--', 'model=tiny'], sys.argv\n"
        "step = 1.0 if 'NSA_TRITON_TILES' in os.environ else 1.25\n"
        "json.dump({'step_time_s': step, 'tokens_per_s': 1000 / step}, open(sys.argv[2], 'w'))\n")
    monkeypatch.setitem(ab_tiles.BENCHES, "train", (fake, ab_tiles.train_times))
    monkeypatch.setattr(sys, "argv", ["ab_tiles.py", "--bench", "train", "--runs", "2", "--out-dir",
                                      str(tmp_path / "ab"), "--variant", "default",
                                      "--variant", 'w={"select": {"small": {"wdot": 1}}}',
                                      "--", "--steps", "2", "--", "model=tiny"])
    ab_tiles.main()
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]]
            for line in capsys.readouterr().out.splitlines() if "|" in line}
    assert rows["step ms"] == ["1250.000-1250.000", "1000.000-1000.000"]
    assert rows["k tokens/s"] == ["0.800-0.800", "1.000-1.000"]


def test_tune_flags_outputs_that_change_between_runs():
    """The tune section's second-run check: float outputs compare by relative error (atomics' order gives ~1e-6),
    integer outputs (block ids) must repeat exactly."""
    import torch

    x, ids = torch.ones(100), torch.arange(10)
    noisy = iter([[x + 1e-2, ids], [x, ids + 1]])
    assert ba._repeat_err(lambda: [x * (1 + 1e-7), ids.clone()], [x, ids]) < 1e-6
    assert abs(ba._repeat_err(lambda: next(noisy), [x, ids]) - 1e-2) < 1e-6
    assert ba._repeat_err(lambda: next(noisy), [x, ids]) == 1.0


def test_sass_report_presets_build_the_shipped_tiles():
    """The presets compile what ships at the main shape: warps, stages and query rows of GPU_TILES' "small" entry
    (rows = NPOS x G_PAD), whether the dQ computes delta itself and whether the selection takes the wdot product;
    a kernel with a TMA option has a "-tma" preset beside its gathering one."""
    import sass_report

    from kernels.triton_common import GPU_TILES

    tiles_of = {"select": "select", "band-fwd": "band_fwd", "band-dkdv": "band_dkdv", "band-dq": "band_dq",
                "selected-fwd": "selected_fwd", "selected-dq": "selected_dq", "selected-dkdv": "selected_dkdv"}
    for name, kernel in tiles_of.items():
        tiles = GPU_TILES[kernel]["small"]
        _module, _kernel, _types, consts, _div16, warps, stages = sass_report.PRESETS[name]
        assert (warps, stages) == (tiles["warps"], tiles["stages"]), name
        if "rows" in tiles:
            assert consts["NPOS"] * consts["G_PAD"] == tiles["rows"], name
        if "fused_delta" in tiles:
            assert consts["FUSED_DELTA"] == bool(tiles["fused_delta"]), name
        if "wdot" in tiles:
            assert consts["WDOT"] == bool(tiles["wdot"]), name
        if "tma" in tiles:
            assert f"{name}-tma" in sass_report.PRESETS, name
            assert sass_report.PRESETS[f"{name}-tma"][3]["TMA"] and not consts["TMA"], name


def test_race_scan_flags_the_pipelined_selected_dkdv_and_passes_the_shipped_tiles(tmp_path):
    """scripts/race_scan.py at the main heads: the shipped tiles (the selected dK/dV key-major, pipelined) build
    without in-flight overwrites; the selected dK/dV row-major and pipelined at 32 rows (2 stages, what gave the
    wrong dK on the H100) is flagged on its Q and dO buffers and nothing else is; pipelined row-major at 64 rows or
    key-major at 8 warps (every product a wgmma, two buffers) it is not."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "NSA_TRITON_TILES")}

    def scan(**dkdv):
        if dkdv:
            tiles = tmp_path / "tiles.json"
            tiles.write_text(json.dumps({"selected_dkdv": {"small": dkdv}}))
            env["NSA_TRITON_TILES"] = str(tiles)
        return subprocess.run([sys.executable, str(REPO / "scripts" / "race_scan.py"), "--shapes", "main"],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=900)

    shipped = scan()
    assert shipped.returncode == 0 and "RACE" not in shipped.stdout, shipped.stdout + shipped.stderr[-2000:]
    assert len(re.findall(r"\]: ok", shipped.stdout)) >= 9, shipped.stdout  # band x2 ops, select, selected
    pipelined = scan(key_major=0, stages=2)
    flagged = [line for line in pipelined.stdout.splitlines() if "RACE" in line]
    assert pipelined.returncode == 1 and len(flagged) == 1 and "_selected_bwd_dkdv_kernel" in flagged[0], flagged
    assert sorted(re.findall(r"%(q|do)_\d+", flagged[0])) == ["do", "q"], flagged
    for pipelined_right in (dict(rows=64, warps=8, stages=2, key_major=0), dict(key_major=1, warps=8, stages=3)):
        out = scan(**pipelined_right)
        assert out.returncode == 0 and "RACE" not in out.stdout, (pipelined_right, out.stdout)
