"""The shapes every benchmark and GPU check uses, in one place (no imports: scripts that must choose their Triton
before importing torch or triton, like race_scan.py, read it too)."""

# NSA's sizes from the paper (../shared/NSA.md): compression block l, stride d, selection block l', n selected
# blocks, window w (configs/attention/nsa.yaml trains with the same).
NSA = dict(block_size=32, stride=16, select_size=64, num_select=16, window=512)
HQ, HKV, D_MAIN = 64, 4, 128  # the main shape (issue 5): 64 query heads in 4 KV groups (G = 16), head dim 128
SMALL_HEADS = (16, 1, 64)  # Hq, Hkv, D of configs/model/small_gqa16.yaml, the long-context training model
# (Hq, Hkv, Dk, Dv) by name: the main heads, the training model's and the paper's Dk = 192 / Dv = 128
HEAD_SHAPES = {"main": (HQ, HKV, D_MAIN, D_MAIN), "small": (*SMALL_HEADS, SMALL_HEADS[2]), "paper": (HQ, HKV, 192, 128)}
