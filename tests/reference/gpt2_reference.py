#!/usr/bin/python3
"""A tiny Hugging Face GPT-2 checkpoint and its forward/backward, computed independently in torch.

Purpose
-------
This script writes

* ``tests/reference/gpt2_tiny/config.json`` and ``tests/reference/gpt2_tiny/model.safetensors``:
  a tiny GPT-2 in exactly the layout ``transformers.GPT2Model.save_pretrained`` uses (key names
  without the ``transformer.`` prefix, as the hub's ``gpt2`` checkpoint; Conv1D weights stored
  ``[in x out]``; the causal-mask buffers ``h.{l}.attn.bias`` included as older checkpoints do;
  ``__metadata__ = {"format": "pt"}``), and
* ``tests/reference/gpt2_reference.safetensors``: a batch of tokens and targets with the logits,
  the loss and a few gradients of that model, computed in float64 by torch autograd.

The C++ tests ``tests/io/hf_gpt2_test.cpp`` and ``tests/io/peft_lora_test.cpp`` import the
checkpoint with ``loralab::io::import_hf_gpt2`` and compare ``loralab::model::Gpt`` (full mode,
double) against these tensors, so the library's hand-written forward and backward are checked
against an implementation that shares no code with it.

The model (transformers is not installed here, so it is written out by hand)
-----------------------------------------------------------------------------
It follows ``transformers.models.gpt2.modeling_gpt2`` (eager attention, eval mode, no dropout):

* ``x = wte[tokens] + wpe[0..T-1]``
* per block: ``x = x + attn(ln_1(x))``; ``x = x + mlp(ln_2(x))``
* ``attn``: ``qkv = Conv1D(c_attn)``, split into q, k, v ``[B, H, T, hd]``;
  ``w = q k^T / sqrt(hd)``; entries above the diagonal set to ``finfo.min`` (HF's
  ``torch.where(causal_mask, w, mask_value)``); ``softmax``; ``w v``; heads merged back to
  ``[B, T, d]``; ``Conv1D(c_proj)``
* ``mlp``: ``Conv1D(c_proj)(gelu_new(Conv1D(c_fc)(x)))`` with HF's ``NewGELUActivation``
  ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``
* ``Conv1D(x) = x @ W + b`` with ``W [in x out]`` (HF's ``torch.addmm(bias, x, weight)``)
* ``logits = ln_f(x) @ wte^T`` (the tied head), LayerNorm eps = ``layer_norm_epsilon``
* loss: mean cross entropy over targets that are not -1 (targets are given explicitly, so there is
  no internal shift as in ``GPT2LMHeadModel(labels=...)``).

Config: vocab_size 20, n_positions (= n_ctx) 8, n_embd 16, n_layer 2, n_head 2, n_inner null
(= 4 * 16 = 64), layer_norm_epsilon 1e-5, activation_function gelu_new.

Weights are float32 draws (they are stored as F32, as HF checkpoints are) with larger scales than
GPT-2's init so that the model is clearly non-linear: Conv1D weights N(0, 0.25^2), biases
N(0, 0.1^2), wte N(0, 0.5^2), wpe N(0, 0.3^2), LayerNorm gamma 1 + N(0, 0.1^2), beta
N(0, 0.1^2). The forward and backward run in float64 on exactly those float32 values.

``gpt2_reference.safetensors`` (F64 unless noted; HF layout, so gradients of Conv1D weights are
``[in x out]``)
--------------------------------------------------------------------------------------------------
=================================  =============  ==========================================
key                                shape          meaning
=================================  =============  ==========================================
``tokens``                         I64 [2, 8]     input token ids (batch 2, sequence 8 = context)
``targets``                        I64 [2, 8]     next-token targets, -1 = ignored (3 of them)
``logits``                         [16, 20]       rows b * 8 + t
``loss``                           [1]            mean cross entropy over the 13 counted targets
``grad.h.0.attn.c_attn.weight``    [16, 48]       dloss/dW, Conv1D layout [in x out]
``grad.h.0.attn.c_attn.bias``      [48]
``grad.h.1.mlp.c_proj.weight``     [64, 16]       Conv1D layout [in x out]
``grad.h.1.ln_2.weight``           [16]
``grad.wte.weight``                [20, 16]       embedding + tied head
``grad.wpe.weight``                [8, 16]
``grad.ln_f.weight``               [16]
=================================  =============  ==========================================

``__metadata__``: magic="loralab-golden", version="1", generator, torch version and the config.

File format
-----------
safetensors written by hand with ``json`` + ``struct`` (no safetensors package needed), tensors
contiguous in sorted-name order, header padded with spaces to a multiple of 8 bytes;
``config.json`` is ``json.dumps(..., indent=2, sort_keys=True)`` plus a newline.

Re-running
----------
    /usr/bin/python3 tests/reference/gpt2_reference.py

(Debian's torch is installed for /usr/bin/python3 only.) Everything comes from a fixed
``torch.manual_seed``, so a re-run reproduces all three files byte for byte on the same torch
version (check with ``sha256sum``). Bump ``VERSION`` here and ``kGoldenVersion`` in
``tests/io/hf_gpt2_test.cpp`` together when the contents change meaning.
"""

import json
import math
import os
import sys

import torch

from safetensors_io import decode_safetensors, encode_safetensors

MAGIC = "loralab-golden"
VERSION = "1"
GENERATOR = "tests/reference/gpt2_reference.py"
TORCH_SEED = 20261125  # same base seed as tests/support/testing.hpp

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "gpt2_tiny")
REFERENCE_PATH = os.path.join(HERE, "gpt2_reference.safetensors")

CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 8,
    "n_embd": 16,
    "n_head": 2,
    "n_inner": None,
    "n_layer": 2,
    "n_positions": 8,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.0,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 20,
}

BATCH, SEQ = 2, 8
GRAD_KEYS = ["h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias", "h.1.mlp.c_proj.weight",
             "h.1.ln_2.weight", "wte.weight", "wpe.weight", "ln_f.weight"]


# ---------------------------------------------------------------------------------------------
# Weights (HF layout)
# ---------------------------------------------------------------------------------------------
def make_weights():
    """Deterministic float32 weights keyed by HF GPT2Model names (Conv1D weights [in x out])."""
    d, V, P, L = CONFIG["n_embd"], CONFIG["vocab_size"], CONFIG["n_positions"], CONFIG["n_layer"]
    ff = CONFIG["n_inner"] or 4 * d
    f32 = torch.float32

    def normal(*shape, std):
        return (torch.randn(*shape, dtype=torch.float64) * std).to(f32)

    w = {"wte.weight": normal(V, d, std=0.5), "wpe.weight": normal(P, d, std=0.3)}
    for l in range(L):
        h = f"h.{l}."
        w[h + "ln_1.weight"] = (1.0 + normal(d, std=0.1)).to(f32)
        w[h + "ln_1.bias"] = normal(d, std=0.1)
        w[h + "attn.c_attn.weight"] = normal(d, 3 * d, std=0.25)
        w[h + "attn.c_attn.bias"] = normal(3 * d, std=0.1)
        w[h + "attn.c_proj.weight"] = normal(d, d, std=0.25)
        w[h + "attn.c_proj.bias"] = normal(d, std=0.1)
        w[h + "ln_2.weight"] = (1.0 + normal(d, std=0.1)).to(f32)
        w[h + "ln_2.bias"] = normal(d, std=0.1)
        w[h + "mlp.c_fc.weight"] = normal(d, ff, std=0.25)
        w[h + "mlp.c_fc.bias"] = normal(ff, std=0.1)
        w[h + "mlp.c_proj.weight"] = normal(ff, d, std=0.25)
        w[h + "mlp.c_proj.bias"] = normal(d, std=0.1)
    w["ln_f.weight"] = (1.0 + normal(d, std=0.1)).to(f32)
    w["ln_f.bias"] = normal(d, std=0.1)
    return w


def causal_buffers():
    """HF's (non-trainable) h.{l}.attn.bias buffers: tril(ones) [1, 1, n_positions, n_positions].

    Stored as F32 here (older transformers kept them as uint8/bool); importers must ignore them.
    """
    P = CONFIG["n_positions"]
    tril = torch.tril(torch.ones(P, P, dtype=torch.float32)).view(1, 1, P, P)
    return {f"h.{l}.attn.bias": tril.clone() for l in range(CONFIG["n_layer"])}


# ---------------------------------------------------------------------------------------------
# The model, as transformers' GPT2 (eval mode), on float64 copies of the weights
# ---------------------------------------------------------------------------------------------
def gelu_new(x):
    """transformers.activations.NewGELUActivation."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def conv1d(x, weight, bias):
    """transformers.pytorch_utils.Conv1D: x @ W + b with W [in x out]."""
    size_out = x.size()[:-1] + (weight.size(-1),)
    return torch.addmm(bias, x.reshape(-1, x.size(-1)), weight).view(size_out)


def layer_norm(x, weight, bias):
    return torch.nn.functional.layer_norm(x, (x.size(-1),), weight, bias,
                                          CONFIG["layer_norm_epsilon"])


def attention(x, p, h):
    """GPT2Attention (eager): fused c_attn, causal softmax(q k^T / sqrt(hd)) v, c_proj."""
    B, T, d = x.shape
    H = CONFIG["n_head"]
    hd = d // H
    qkv = conv1d(x, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"])
    q, k, v = qkv.split(d, dim=2)

    def split_heads(t):  # [B, T, d] -> [B, H, T, hd]
        return t.view(B, T, H, hd).permute(0, 2, 1, 3)

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    w = torch.matmul(q, k.transpose(-1, -2))
    w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype)  # scale_attn_weights
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T)
    mask_value = torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype)
    w = torch.where(causal, w, mask_value)
    w = torch.nn.functional.softmax(w, dim=-1)
    o = torch.matmul(w, v)                                # [B, H, T, hd]
    o = o.permute(0, 2, 1, 3).contiguous().view(B, T, d)  # merge heads
    return conv1d(o, p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"])


def mlp(x, p, h):
    a = gelu_new(conv1d(x, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"]))
    return conv1d(a, p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])


def gpt2_logits(p, tokens):
    B, T = tokens.shape
    x = p["wte.weight"][tokens] + p["wpe.weight"][torch.arange(T)].unsqueeze(0)
    for l in range(CONFIG["n_layer"]):
        h = f"h.{l}."
        x = x + attention(layer_norm(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"]), p, h)
        x = x + mlp(layer_norm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"]), p, h)
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"])
    return x @ p["wte.weight"].T  # tied head: [B, T, V]


def make_batch():
    V = CONFIG["vocab_size"]
    tokens = torch.randint(0, V, (BATCH, SEQ), dtype=torch.int64)
    targets = torch.randint(0, V, (BATCH, SEQ), dtype=torch.int64)
    targets[0, 2] = -1  # ignored positions, as the loader marks padding
    targets[1, 0] = -1
    targets[1, 7] = -1
    return tokens, targets


def build():
    torch.manual_seed(TORCH_SEED)
    weights = make_weights()
    tokens, targets = make_batch()

    params = {k: v.to(torch.float64).requires_grad_(True) for k, v in weights.items()}
    logits = gpt2_logits(params, tokens)
    V = CONFIG["vocab_size"]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1),
                                             ignore_index=-1, reduction="mean")
    loss.backward()

    # Cross-checks: the causal mask worked (changing a later token leaves earlier logits alone)
    # and every reported gradient is non-trivial.
    with torch.no_grad():
        probe = tokens.clone()
        probe[:, -1] = (probe[:, -1] + 1) % V
        other = gpt2_logits(params, probe)
        assert torch.equal(other[:, :-1], logits[:, :-1]), "attention is not causal"
    for k in GRAD_KEYS:
        assert params[k].grad.abs().max() > 1e-4, f"gradient of {k} is (nearly) zero"

    reference = {"tokens": tokens, "targets": targets,
                 "logits": logits.detach().reshape(-1, V).contiguous(),
                 "loss": loss.detach().reshape(1)}
    for k in GRAD_KEYS:
        reference["grad." + k] = params[k].grad.detach().clone()
    return weights, reference


# ---------------------------------------------------------------------------------------------
# safetensors I/O (hand-written: header length u64 LE, JSON header, then the data section)
# ---------------------------------------------------------------------------------------------
# encode_safetensors / decode_safetensors live in safetensors_io.py (shared with the other script).


def checked_bytes(tensors, metadata):
    """Encodes, then re-parses and compares before anything is written."""
    raw = encode_safetensors(tensors, metadata)
    back, meta_back = decode_safetensors(raw)
    assert meta_back == metadata
    assert sorted(back) == sorted(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert torch.equal(back[name], t), name
    return raw


def write(path, raw):
    with open(path, "wb") as f:
        f.write(raw)
    print(f"wrote {len(raw)} bytes to {os.path.relpath(path)}")


def main():
    weights, reference = build()
    os.makedirs(MODEL_DIR, exist_ok=True)

    config_text = (json.dumps(CONFIG, indent=2, sort_keys=True) + "\n").encode("utf-8")
    model_raw = checked_bytes({**weights, **causal_buffers()}, {"format": "pt"})
    config_string = " ".join(f"{k}={CONFIG[k]}" for k in
                             ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"))
    ref_meta = {"magic": MAGIC, "version": VERSION, "generator": GENERATOR,
                "torch": torch.__version__, "config": config_string,
                "model": "gpt2_tiny/model.safetensors"}
    ref_raw = checked_bytes(reference, ref_meta)

    write(os.path.join(MODEL_DIR, "config.json"), config_text)
    write(os.path.join(MODEL_DIR, "model.safetensors"), model_raw)
    write(REFERENCE_PATH, ref_raw)
    total = len(config_text) + len(model_raw) + len(ref_raw)
    assert total < 60_000, f"golden files grew to {total} bytes"
    print(f"loss {reference['loss'].item():.17g}, {total} bytes in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
