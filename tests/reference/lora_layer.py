#!/usr/bin/python3
"""Golden tensors for loralab's CPU LoRA layer, computed independently with PyTorch.

Purpose
-------
This script writes ``tests/reference/lora_layer.safetensors``, a small file of reference
inputs and outputs that the C++ test ``tests/cpu/golden_test.cpp`` loads and compares against
``loralab::cpu::AdaptedLinear`` and ``loralab::cpu::AdamW``. Forward and backward results come
from torch autograd in float64, so they check the library's hand-written backward pass against an
implementation that shares no code with it.

Conventions (methods.md section 1, HF PEFT LoRA)
------------------------------------------------
* Linear layer: weight W [out x in], bias b [out]; input X [n x in], row-major.
* Adapter factors A [r x in], B [out x r]; scale s = alpha / r.
* Forward: Y = X W^T + b + s * (H A^T) B^T, with H = X .* D / (1 - p) the dropped copy of X
  (H = X without dropout). The frozen path always sees the undropped X.
* Loss L = sum(Y .* GY) for a fixed upstream gradient GY [n x out], so dL/dY = GY.
  Golden outputs are Y, dX = dL/dX, dA = dL/dA, dB = dL/dB.
* A and B are both random and non-zero (unlike the default init, where B = 0), so every
  gradient is non-trivial.
* The dropout mask D is loralab's, not torch's: counter-based Philox 4x32-10 keyed by
  (seed, module_id, step), reimplemented below and checked against Random123's known-answer
  vectors (include/loralab/core/philox.hpp is the C++ side).

Cases (tensor name prefixes; all tensors F64 unless noted, 2-D tensors are [rows, cols])
-----------------------------------------------------------------------------------------
* ``plain.*``     n=6, in=10, out=7, r=3, alpha=5, with bias, no dropout.
* ``rank_full.*`` n=5, in=4, out=6, r=4 = min(in, out), alpha=2, no bias (no ``b`` key).
* ``dropout.*``   as plain, plus p=0.25, seed, module_id=7, step=42 and the mask ``D`` (0/1).
* ``init.*``      default (Kaiming-uniform) initial A for in=10, r=3, seed=99, module_id=2.
* ``adamw.*``     three torch.optim.AdamW steps on a 12-entry float64 parameter;
  ``adamw32.*`` the same in float32 (p*, g* as F32 tensors; the hyper-parameters stay F64)
  to pin single-precision rounding.

File format
-----------
safetensors, written by hand (no safetensors package needed): 8-byte little-endian header
length N, N bytes of JSON header (space-padded to a multiple of 8), then the raw little-endian
data of every tensor, contiguous in sorted-name order. ``__metadata__`` carries
magic="loralab-golden", version="1", the generator path and the torch version; the C++ test
refuses a file whose magic or version differs.

Re-running
----------
    /usr/bin/python3 tests/reference/lora_layer.py

(Debian's torch is installed for /usr/bin/python3 only.) All randomness comes from a fixed
torch.manual_seed and from Philox, so a re-run reproduces the file byte for byte on the same
torch version; bump ``VERSION`` here and in golden_test.cpp when the contents change meaning.
"""

import math
import os
from fractions import Fraction
import sys

import torch

from safetensors_io import decode_safetensors, encode_safetensors

MAGIC = "loralab-golden"
VERSION = "1"
GENERATOR = "tests/reference/lora_layer.py"
TORCH_SEED = 20261125  # same base seed as tests/support/testing.hpp
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lora_layer.safetensors")

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

# ---------------------------------------------------------------------------------------------
# Philox 4x32-10 (Salmon et al., SC'11), exactly as include/loralab/core/philox.hpp.
# ---------------------------------------------------------------------------------------------
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85

RNG_INIT_A = 1          # loralab::RngPurpose::init_a
RNG_INPUT_DROPOUT = 5   # loralab::RngPurpose::input_dropout


def philox4x32_10(ctr, key0, key1):
    """The Philox 4x32 bijection, 10 rounds; ctr is 4 uint32 words, the key two uint32 words."""
    c0, c1, c2, c3 = ctr
    for rnd in range(10):
        if rnd > 0:  # Random123 bumps the key before every round but the first
            key0 = (key0 + PHILOX_W0) & MASK32
            key1 = (key1 + PHILOX_W1) & MASK32
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        hi0, lo0 = p0 >> 32, p0 & MASK32
        hi1, lo1 = p1 >> 32, p1 & MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ key0, lo1, hi0 ^ c3 ^ key1, lo0
    return [c0, c1, c2, c3]


def make_stream(purpose, module, index):
    """64-bit stream id: purpose in bits 56..63, module in 32..55, index in 0..31."""
    return ((purpose << 56) | ((module & 0xFFFFFF) << 32) | (index & MASK32)) & MASK64


def philox_block(seed, stream, block):
    """Block `block` of stream `stream` under `seed`: key = seed, counter = (block, stream)."""
    ctr = [block & MASK32, (block >> 32) & MASK32, stream & MASK32, (stream >> 32) & MASK32]
    return philox4x32_10(ctr, seed & MASK32, (seed >> 32) & MASK32)


def drop_threshold(p):
    """An element is dropped when its 32-bit word is below this (p * 2^32 computed in double)."""
    scaled = p * 4294967296.0
    return MASK32 if scaled >= 4294967295.0 else int(math.floor(scaled))


def check_philox_known_answers():
    """Random123's published known-answer vectors for philox4x32_10 (kat_vectors)."""
    kats = [
        ([0, 0, 0, 0], 0, 0, [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([MASK32] * 4, MASK32, MASK32, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], 0xA4093822, 0x299F31D0,
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for ctr, k0, k1, want in kats:
        got = philox4x32_10(ctr, k0, k1)
        assert got == want, f"Philox KAT failed: {[hex(w) for w in got]} != {[hex(w) for w in want]}"


def dropout_mask(n, d_in, p, seed, module_id, step):
    """loralab's input-dropout mask D [n x d_in] (1 = kept, 0 = dropped) for one forward pass.

    Element e = row * d_in + col uses word e & 3 of Philox block e >> 2 of the stream
    (input_dropout, module_id, step & 0xffffffff).
    """
    stream = make_stream(RNG_INPUT_DROPOUT, module_id, step & MASK32)
    threshold = drop_threshold(p)
    D = torch.empty(n, d_in, dtype=torch.float64)
    for row in range(n):
        for col in range(d_in):
            e = row * d_in + col
            word = philox_block(seed, stream, e >> 2)[e & 3]
            D[row, col] = 0.0 if word < threshold else 1.0
    return D


def kaiming_uniform_a(d_in, rank, seed, module_id):
    """loralab's default initial A [rank x d_in]: U(-1/sqrt(in), 1/sqrt(in)) from 53 Philox bits.

    Flat element i uses words 0 and 1 of block i of stream (init_a, module_id, 0). The C++ computes
    fma(hi - lo, u, lo) in double (one rounding, whatever the compiler contracts); here the same
    single rounding comes from exact rational arithmetic.
    """
    stream = make_stream(RNG_INIT_A, module_id, 0)
    bound = 1.0 / math.sqrt(float(d_in))
    lo, hi = -bound, bound
    values = []
    for i in range(rank * d_in):
        w = philox_block(seed, stream, i)
        bits = (w[0] << 32) | w[1]
        u = float(bits >> 11) * (2.0 ** -53)
        values.append(float(Fraction(hi - lo) * Fraction(u) + Fraction(lo)))
    return torch.tensor(values, dtype=torch.float64).reshape(rank, d_in)


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------
def scalar(value, dtype=torch.float64):
    return torch.tensor([value], dtype=dtype)


def lora_case(prefix, n, d_in, d_out, rank, alpha, bias=True, dropout=None):
    """Random X, W, b, A, B, GY; forward + autograd backward of L = sum(Y .* GY) in float64.

    dropout: None, or a dict with p, seed, module_id, step (loralab's Philox mask is used).
    """
    f64 = torch.float64
    X = torch.randn(n, d_in, dtype=f64)
    W = torch.randn(d_out, d_in, dtype=f64)
    b = torch.randn(d_out, dtype=f64) if bias else None
    A = torch.randn(rank, d_in, dtype=f64)
    B = torch.randn(d_out, rank, dtype=f64)
    GY = torch.randn(n, d_out, dtype=f64)
    s = alpha / rank

    Xg = X.clone().requires_grad_(True)
    Ag = A.clone().requires_grad_(True)
    Bg = B.clone().requires_grad_(True)
    if dropout is not None:
        D = dropout_mask(n, d_in, dropout["p"], dropout["seed"], dropout["module_id"],
                         dropout["step"])
        H = Xg * D * (1.0 / (1.0 - dropout["p"]))  # inverted dropout on the branch input only
    else:
        H = Xg
    Y = Xg @ W.T
    if b is not None:
        Y = Y + b
    Y = Y + s * ((H @ Ag.T) @ Bg.T)
    (Y * GY).sum().backward()

    out = {"X": X, "W": W, "A": A, "B": B, "GY": GY, "Y": Y.detach(), "dX": Xg.grad,
           "dA": Ag.grad, "dB": Bg.grad, "alpha": scalar(alpha), "rank": scalar(float(rank))}
    if b is not None:
        out["b"] = b
    if dropout is not None:
        out["D"] = D
        out["p"] = scalar(dropout["p"])
        for k in ("seed", "module_id", "step"):
            out[k] = scalar(dropout[k], torch.int64)
        # Cross-check the autograd dX against the closed form the library implements.
        closed = GY @ W + ((s * GY @ B) @ A) * D / (1.0 - dropout["p"])
        assert torch.allclose(out["dX"], closed, rtol=1e-13, atol=1e-13)
    # Every gradient must be non-trivial (A and B are both non-zero).
    for k in ("dX", "dA", "dB"):
        assert out[k].abs().max() > 1e-3, f"{prefix}.{k} is (nearly) zero"
    return {f"{prefix}.{k}": v for k, v in out.items()}


def adamw_case(prefix, dtype, numel=12, steps=3):
    """p0, g1..g3 and p1..p3 of torch.optim.AdamW (single-tensor path) in `dtype`."""
    hp = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1}
    p = torch.randn(numel, dtype=torch.float64).to(dtype).requires_grad_(True)
    out = {"p0": p.detach().clone()}
    opt = torch.optim.AdamW([p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                            weight_decay=hp["weight_decay"], foreach=False)
    for t in range(1, steps + 1):
        g = torch.randn(numel, dtype=torch.float64).to(dtype)
        p.grad = g.clone()
        opt.step()
        out[f"g{t}"] = g
        out[f"p{t}"] = p.detach().clone()
    for k, v in hp.items():  # hyper-parameters stay F64 (exact) in both precisions
        out[k] = scalar(v)
    return {f"{prefix}.{k}": v for k, v in out.items()}


def build_tensors():
    torch.manual_seed(TORCH_SEED)
    tensors = {}
    tensors.update(lora_case("plain", n=6, d_in=10, d_out=7, rank=3, alpha=5.0))
    tensors.update(lora_case("rank_full", n=5, d_in=4, d_out=6, rank=4, alpha=2.0, bias=False))
    tensors.update(lora_case("dropout", n=6, d_in=10, d_out=7, rank=3, alpha=5.0,
                             dropout={"p": 0.25, "seed": 1234567890123, "module_id": 7,
                                      "step": 42}))
    d = tensors["dropout.D"]
    assert 0 < d.sum() < d.numel(), "dropout mask should keep some and drop some elements"

    init = {"in": 10, "rank": 3, "seed": 99, "module_id": 2}
    tensors["init.A_init"] = kaiming_uniform_a(init["in"], init["rank"], init["seed"],
                                               init["module_id"])
    tensors["init.seed"] = scalar(init["seed"], torch.int64)
    tensors["init.module_id"] = scalar(init["module_id"], torch.int64)

    tensors.update(adamw_case("adamw", torch.float64))
    tensors.update(adamw_case("adamw32", torch.float32))
    return tensors


# ---------------------------------------------------------------------------------------------
# safetensors I/O (hand-written: header length u64 LE, JSON header, then the data section)
# ---------------------------------------------------------------------------------------------
# encode_safetensors / decode_safetensors live in safetensors_io.py (shared with the other script).


def main():
    check_philox_known_answers()
    tensors = build_tensors()
    metadata = {"magic": MAGIC, "version": VERSION, "generator": GENERATOR,
                "torch": torch.__version__}
    raw = encode_safetensors(tensors, metadata)

    # Round-trip check before writing anything.
    back, meta_back = decode_safetensors(raw)
    assert meta_back == metadata
    assert sorted(back) == sorted(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert torch.equal(back[name], t), name

    with open(OUT_PATH, "wb") as f:
        f.write(raw)
    print(f"wrote {len(tensors)} tensors, {len(raw)} bytes to {OUT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
