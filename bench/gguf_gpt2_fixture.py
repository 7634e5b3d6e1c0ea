#!/usr/bin/env python3
"""A tiny GGUF file of llama.cpp's `gpt2` architecture, laid out as llama.cpp's own converter
(convert_hf_to_gguf.py, GPT2Model) writes one, and its reference log-probs, for ferrolm's
test crates/model/tests/gguf.rs (`a_llama_cpp_gpt2_file_loads_with_its_reference_logits`),
which runs in CI with no Python.

Written with the `gguf` package (llama.cpp's gguf-py), not by ferrolm:
  * tensors token_embd, position_embd, blk.N.{attn_norm,attn_qkv,attn_output,ffn_norm,
    ffn_up,ffn_down}.{weight,bias}, output_norm.{weight,bias}; no output.weight (tied, as
    GPT-2's Hugging Face checkpoints are); linear weights (out, in) — the converter's
    transposed Conv1D — so GGML's ne is (in, out); q, k, v fused in attn_qkv;
  * a mix of the types llama.cpp files hold: position_embd and norms F32 (as the converter
    forces), token_embd F16, attn_qkv and ffn_up Q8_0, attn_output Q5_0 (llama.cpp's Q4_K
    fallback on rows of 64), ffn_down F32;
  * hparams gpt2.{context_length,embedding_length,feed_forward_length,block_count,
    attention.head_count,attention.layer_norm_epsilon}, no ferrolm keys; a "gpt2" (byte-level
    BPE) vocabulary with tokenizer.ggml.pre "gpt-2".
The reference is a float64 numpy forward of GPT-2 (LayerNorm, tanh GELU, learned positions,
causal softmax attention) on the dequantized weights, the inputs of Q8_0 and Q5_0 products
rounded to 8 bits as ferrolm and llama.cpp round them (`q8_inputs`): log-prob of each next token and the
last position's logits. When llama_cpp (llama-cpp-python) imports, llama.cpp itself loads
the file and scores the same ids: its max |Δ log-prob| to the numpy reference is printed
and recorded (the proof that the layout is llama.cpp's, not just ferrolm's reading of it).

llama.cpp rounds more than the file does (its products on Q8_0/Q5_0 weights quantize the
activations to Q8_0 too, F16 weights meet f16 activations, GELU is read from an f16 table):
measured on 2026-12-06 with llama-cpp-python 0.3.36, the committed mixed-type file is within
0.15 of the numpy log-probs (0.156 once the reference rounds the Q8_0 products' inputs too, 0.124 once it rounds the Q5_0 products' inputs as well) (greedy equal at every position), the same weights all in F32
(`--all-f32`) within 4.3e-3.

Usage: /work/venv-llama-noamx/bin/python bench/gguf_gpt2_fixture.py [--out crates/model/tests/fixtures/gguf/gpt2_llamacpp] [--all-f32]
"""
import argparse
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

V_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r"]
D, LAYERS, HEADS, CTX, FF, EPS = 64, 2, 4, 32, 256, 1e-5
IDS = [262, 84, 104, 101, 220, 257, 258, 17, 18, 19, 220, 220, 10, 259, 260, 101, 261, 33, 255, 0]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def vocab():
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)] + [m.replace(" ", "") for m in V_MERGES] + ["<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    return tokens, types


def weights(rng, n_vocab):
    w = {"token_embd.weight": rng.normal(0, 0.5, (n_vocab, D)), "position_embd.weight": rng.normal(0, 0.3, (CTX, D))}
    for i in range(LAYERS):
        b = f"blk.{i}."
        for norm in ["attn_norm", "ffn_norm"]:
            w[b + norm + ".weight"] = 1 + rng.normal(0, 0.2, D)
            w[b + norm + ".bias"] = rng.normal(0, 0.2, D)
        for name, shape in [("attn_qkv", (3 * D, D)), ("attn_output", (D, D)), ("ffn_up", (FF, D)), ("ffn_down", (D, FF))]:
            w[b + name + ".weight"] = rng.normal(0, 0.5 / np.sqrt(shape[1]) * 2, shape)
            w[b + name + ".bias"] = rng.normal(0, 0.2, shape[0])
    w["output_norm.weight"] = 1 + rng.normal(0, 0.2, D)
    w["output_norm.bias"] = rng.normal(0, 0.2, D)
    return {k: v.astype(np.float32) for k, v in w.items()}


ALL_F32 = False


def gguf_type(name):
    if ALL_F32:
        return Q.F32
    if name == "token_embd.weight":
        return Q.F16
    if name.endswith(("attn_qkv.weight", "ffn_up.weight")):
        return Q.Q8_0
    if name.endswith("attn_output.weight"):
        return Q.Q5_0
    return Q.F32


def stored(w, qtype):
    """(data for add_tensor, the values llama.cpp will read back)."""
    if qtype == Q.F32:
        return w, w.astype(np.float64)
    if qtype == Q.F16:
        h = w.astype(np.float16)
        return h, h.astype(np.float64)
    q = gguf.quants.quantize(w, qtype)
    return q, gguf.quants.dequantize(q, qtype).reshape(w.shape).astype(np.float64)


def layer_norm(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * g + b


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def q8_inputs(h, name):
    """The inputs a product on `name` multiplies: rounded to 8 bits in blocks of 32 where the
    tensor is Q8_0 or Q5_0 (both meet Q8_0 activations in llama.cpp, and in ferrolm, which
    holds Q5_0 blocks as Q8_0 blocks of the same values; the rule: d = max|x|/127 in f32,
    x·(1/d) rounded to nearest, ties to even, clamped to ±127, times d), as they are
    (float64) otherwise."""
    if gguf_type(name) not in (Q.Q8_0, Q.Q5_0):
        return h
    x = h.astype(np.float32).reshape(h.shape[0], -1, 32)
    d = (np.abs(x).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.clip(np.rint((x * inv).astype(np.float32)), -127, 127).astype(np.float32)
    return (q * d).astype(np.float32).reshape(h.shape).astype(np.float64)


def forward(w, ids):
    t = len(ids)
    x = w["token_embd.weight"][ids] + w["position_embd.weight"][:t]
    hd = D // HEADS
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(LAYERS):
        b = f"blk.{i}."
        h = layer_norm(x, w[b + "attn_norm.weight"], w[b + "attn_norm.bias"])
        qkv = q8_inputs(h, b + "attn_qkv.weight") @ w[b + "attn_qkv.weight"].T + w[b + "attn_qkv.bias"]
        q, k, v = (qkv[:, j * D:(j + 1) * D].reshape(t, HEADS, hd).transpose(1, 0, 2) for j in range(3))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = (p @ v).transpose(1, 0, 2).reshape(t, D)
        x = x + q8_inputs(o, b + "attn_output.weight") @ w[b + "attn_output.weight"].T + w[b + "attn_output.bias"]
        h = layer_norm(x, w[b + "ffn_norm.weight"], w[b + "ffn_norm.bias"])
        x = x + gelu(q8_inputs(h, b + "ffn_up.weight") @ w[b + "ffn_up.weight"].T + w[b + "ffn_up.bias"]) @ w[b + "ffn_down.weight"].T + w[b + "ffn_down.bias"]
    x = layer_norm(x, w["output_norm.weight"], w["output_norm.bias"])
    return x @ w["token_embd.weight"].T


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def llama_cpp_logprobs(path, ids):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=path, n_ctx=CTX, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0)
    llm.reset()
    llm.eval(ids)
    return log_softmax(np.array(llm.scores[: len(ids)], dtype=np.float64))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="crates/model/tests/fixtures/gguf/gpt2_llamacpp")
    ap.add_argument("--all-f32", action="store_true", help="every tensor F32 (a layout check without llama.cpp's rounding)")
    a = ap.parse_args()
    global ALL_F32
    ALL_F32 = a.all_f32
    os.makedirs(a.out, exist_ok=True)
    tokens, types = vocab()
    rng = np.random.default_rng(20261206)
    w = weights(rng, len(tokens))
    path = os.path.join(a.out, "model.gguf")
    wr = gguf.GGUFWriter(path, "gpt2")
    wr.add_name("ferrolm gpt2 fixture")
    wr.add_context_length(CTX)
    wr.add_embedding_length(D)
    wr.add_feed_forward_length(FF)
    wr.add_block_count(LAYERS)
    wr.add_head_count(HEADS)
    wr.add_layer_norm_eps(EPS)
    wr.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("gpt-2")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(V_MERGES)
    wr.add_bos_token_id(len(tokens) - 1)
    wr.add_eos_token_id(len(tokens) - 1)
    wr.add_add_bos_token(False)
    read_back = {}
    for name, t in w.items():
        qtype = gguf_type(name)
        data, read_back[name] = stored(t, qtype)
        wr.add_tensor(name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    lp = log_softmax(forward(read_back, IDS))
    ref = {
        "about": "bench/gguf_gpt2_fixture.py: float64 numpy GPT-2 forward on the file's dequantized weights, Q8_0 and Q5_0 products on inputs rounded to 8 bits",
        "input_ids": IDS,
        "logprobs": [float(lp[i, IDS[i + 1]]) for i in range(len(IDS) - 1)],
        "greedy": [int(lp[i].argmax()) for i in range(len(IDS))],
        "last_logprobs": [float(x) for x in lp[-1]],
        "types": {n: gguf_type(n).name for n in w},
    }
    cpp = llama_cpp_logprobs(path, IDS)
    if cpp is not None:
        d = float(np.abs(cpp - lp).max())
        import llama_cpp
        ref["llama_cpp"] = {"version": llama_cpp.__version__, "max_abs_dlogprob_all_positions": d,
                            "greedy_equal": bool((cpp.argmax(-1) == lp.argmax(-1)).all())}
        print(f"llama.cpp {llama_cpp.__version__} on {path}: max |Δ log-prob| vs numpy {d:.2e} (all {len(IDS)}×{len(tokens)}), "
              f"greedy equal: {ref['llama_cpp']['greedy_equal']}")
    else:
        print("llama_cpp not importable: the file is not checked against llama.cpp")
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(f"wrote {path} ({os.path.getsize(path)} bytes) and reference.json")


if __name__ == "__main__":
    main()
