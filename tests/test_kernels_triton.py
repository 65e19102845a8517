"""CPU checks of the Triton NSA kernels: the same kernels under Triton's interpreter, against the reference.

Triton decides when it is imported whether kernels are interpreted, so the cases live in
tests/_triton_interpret_cases.py and run in a child pytest process started with TRITON_INTERPRET=1
(whatever this process has imported cannot leak into it). The child runs once per session, started as soon as
collection ends (tests/interpreted.py), and writes a JUnit report; each test below checks its group of cases in
that report and shows their failures. Runtime: about five minutes of one CPU core.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.interpreted import check_group, wait_for

INTERPRETED_CASES = "tests/_triton_interpret_cases.py"

if importlib.util.find_spec("triton") is None:  # found without importing it here
    pytest.skip("Triton is not installed on this platform", allow_module_level=True)


@pytest.fixture(scope="module")
def interpreted_run() -> dict[str, str | None]:
    return wait_for(INTERPRETED_CASES, timeout=900)


def test_dispatch_goes_to_triton_under_the_interpreter(interpreted_run):
    check_group(interpreted_run, "test_dispatch")


def test_compressed_attention_kernel(interpreted_run):
    check_group(interpreted_run, "test_compressed_attention")


def test_select_blocks_kernel(interpreted_run):
    check_group(interpreted_run, "test_select_blocks")


def test_selected_attention_kernel(interpreted_run):
    check_group(interpreted_run, "test_selected_attention")


def test_window_attention_kernel(interpreted_run):
    check_group(interpreted_run, "test_window_attention")


def test_float32_and_torch_compile(interpreted_run):
    check_group(interpreted_run, "test_float32")
    check_group(interpreted_run, "test_torch_compile")


def test_every_interpreted_case_was_checked(interpreted_run):
    prefixes = ("test_dispatch", "test_compressed_attention", "test_select_blocks", "test_selected_attention",
                "test_window_attention", "test_float32", "test_torch_compile")
    unchecked = [name for name in interpreted_run if not name.startswith(prefixes)]
    assert not unchecked, f"add these interpreted cases to a group above: {unchecked}"


def test_inverted_index_groups_queries_by_block():
    """The selection backward's inverted index (plain torch ops, no interpreter needed) against a Python loop:
    each (batch, KV head, block) bucket lists, in ascending order, the positions whose row selected that block
    (valid ids only: >= 0, visible, first occurrence); work items cover each bucket's segments exactly once."""
    from kernels.triton_selected import inverted_index

    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    B, T, Hkv, n, sel, seg_len = 2, 37, 3, 5, 8, 4
    n_blocks = -(-T // sel)
    idx = torch.randint(-1, n_blocks, (B, T, Hkv, n), generator=gen, dtype=torch.int32)
    idx[0, 5, 1] = torch.tensor([0, 0, -1, 0, 1])  # repeats, padding and an invisible block (1 * 8 > 5)
    idx[1, 30, 2] = torch.tensor([2**31 - 1, n_blocks, 3, 3, 0])  # ids past the last block (id * l' overflows int32)
    pos, bucket_off, item_bucket, item_seg, nb = inverted_index(idx, sel, seg_len)
    assert nb == n_blocks and bucket_off.shape == (B * Hkv * n_blocks + 1,)
    expected: dict[int, list[int]] = {}
    for b in range(B):
        for t in range(T):
            for h in range(Hkv):
                for j in dict.fromkeys(idx[b, t, h].tolist()):  # distinct ids, in order
                    if 0 <= j and j * sel <= t:
                        expected.setdefault((b * Hkv + h) * n_blocks + j, []).append(t)
    items = set()
    for u in range(B * Hkv * n_blocks):
        got = pos[bucket_off[u] : bucket_off[u + 1]].tolist()
        assert got == expected.get(u, []), f"bucket {u}"
        items |= {(u, s) for s in range(-(-len(got) // seg_len))}
    done = [(u, s) for u, s in zip(item_bucket.tolist(), item_seg.tolist()) if u >= 0]
    assert sorted(done) == sorted(items) and len(done) == len(set(done))


def test_tile_union_lists_each_tiles_distinct_visible_blocks():
    """tile_union (torch ops, so it runs anywhere): for every tile of P positions, the ascending distinct ids
    that some position of the tile may attend (>= 0, block start <= the position), -1 after them."""
    from kernels.triton_selected import tile_union

    gen = torch.Generator().manual_seed(3)
    B, T, Hkv, n, ss, P = 2, 23, 2, 3, 4, 4
    idx = torch.randint(-1, T // ss + 3, (B, T, Hkv, n), generator=gen, dtype=torch.int32)
    union, count = tile_union(idx, P, ss)
    n_tiles = -(-T // P)
    assert union.shape == (B, n_tiles, Hkv, P * n) and count.shape == (B, n_tiles, Hkv)
    for b in range(B):
        for i in range(n_tiles):
            for h in range(Hkv):
                want = sorted({int(j) for t in range(i * P, min(i * P + P, T)) for j in idx[b, t, h]
                               if j >= 0 and j * ss <= t})
                got = union[b, i, h].tolist()
                assert count[b, i, h] == len(want) and got == want + [-1] * (P * n - len(want)), (b, i, h)
