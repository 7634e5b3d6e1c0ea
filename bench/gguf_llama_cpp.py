#!/usr/bin/env python3
"""ferrolm → GGUF → llama.cpp, side by side (issue 14).

For a ferrolm run folder (modern blocks) or a Hugging Face folder (e.g. the Llama 2-family
SentencePiece fixture crates/model/tests/fixtures/hf/llama2_spm), exports GGUF files at f32,
f16, q8_0 and q4_k_m with `ferrolm export --format gguf`, then for each file:
  * reads its metadata with the `gguf` package (what llama.cpp's tools read);
  * loads it in llama.cpp (llama-cpp-python, built from source) and scores the same token
    ids as `ferrolm score --ids ... --json` on the run folder: max |Δ log-prob| and greedy
    next-token agreement at every position;
  * scores the ids with ferrolm on the GGUF file itself (dequantized weights), so the
    quantisation's own cost shows: mean log-prob per token vs the f32 run (bits per token);
  * quantizes ferrolm's f32 file with llama.cpp's own quantizer (`llama_model_quantize`) at
    the same file type and compares every tensor's type and size with ferrolm's file.
On the f32 file also the tokenizer and greedy decoding:
  * token ids of a few texts: `ferrolm score --text T --json` on the folder vs llama.cpp's
    `tokenize(T, add_bos=True, special=False)` on the file (for a SentencePiece model this
    is llama.cpp's "llama" vocabulary rebuilt from the file's scores);
  * greedy continuations of a few prompts: `ferrolm generate --temperature 0` on the folder
    vs llama.cpp's greedy tokens on the file (both stop at the file's end of sequence),
    compared as text (llama.cpp's tokens detokenized after the prompt's).

Usage: bench/gguf_llama_cpp.py RUN_DIR [--ferrolm target/release/ferrolm] [--ids 1,2,3,...]
Peers: /work/venv-llama/bin/python -m pip install "llama-cpp-python[server]" gguf numpy
Skips with a message when llama_cpp or gguf is missing. (On a CPU whose AMX llama.cpp's
build mishandles, a build with GGML_AMX off: /work/venv-llama-noamx, with the `gguf`
package put on PYTHONPATH from another venv.)
"""
import argparse
import ctypes
import json
import math
import os
import random
import subprocess
import sys
import tempfile


def ferrolm_score(binary, model, ids):
    out = subprocess.run([binary, "score", "--model", model, "--ids", ",".join(map(str, ids)), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["logprobs"]


def llama_logprobs(path, ids, kv_f32=False):
    import numpy as np
    from llama_cpp import Llama
    # llama.cpp keeps its KV cache in f16 unless told (type_k/type_v 0 = GGML_TYPE_F32)
    kv = {"type_k": 0, "type_v": 0} if kv_f32 else {}
    llm = Llama(model_path=path, n_ctx=max(64, len(ids) + 8), logits_all=True, verbose=False, n_threads=2, **kv)
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    # log-prob of token i+1 given tokens 0..=i, as ferrolm score prints them
    lp = [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    greedy = [int(logp[i].argmax()) for i in range(len(ids) - 1)]
    return lp, greedy


TEXTS = ["Hello world", "the quick brown fox jumps over the lazy dog.", " leading space", "line one\nline two",
         "emoji 🦀🎉 ok", "日本語 text", "digits 12345 and 3.14", "tabs\tand\ttabs",
         "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
         "a  b   c    d\n\n\n  e \t\t f   ", "1234567890 3.14159 1e-5 0x7fff 1,000,000", "über naïve café — Ελληνικά, русский",
         "it's they're we'll I'd DON'T", "    indented\n        more\n\ttab\r\nwindows"]
PROMPTS = ["Hello world", "the quick brown", "The answer is"]


def tokenizer_and_greedy(binary, run, path, max_tokens=12):
    """(texts with the same ids, texts, prompts with the same greedy text, prompts)."""
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=64, verbose=False, n_threads=2)
    same_ids = 0
    for t in TEXTS:
        scored = subprocess.run([binary, "score", "--model", run, "--text", t, "--json"], capture_output=True, text=True)
        cpp = llm.tokenize(t.encode(), add_bos=True, special=False)
        if scored.returncode == 0:
            own = json.loads(scored.stdout)["token_ids"]
        else:
            # a text longer than a tiny model's context: the tokenizer alone (with the
            # file's bos, if it starts texts with one, as score does)
            enc = subprocess.run([binary, "tokenizer", "encode", "--tokenizer", os.path.join(run, "tokenizer.json"), "--text", t],
                                 check=True, capture_output=True, text=True).stdout.split()
            own = [int(x) for x in enc]
            if cpp[:1] != own[:1] and llm.metadata.get("tokenizer.ggml.add_bos_token") == "true":
                own = [llm.token_bos()] + own
        same_ids += own == cpp
        if own != cpp:
            print(f"ids differ on {t!r}: ferrolm {own}, llama.cpp {cpp}")
    same_greedy = 0
    for p in PROMPTS:
        # generate ends its output with one newline of its own (the continuation may end in more)
        own = subprocess.run([binary, "generate", "--model", run, "--prompt", p, "--max-tokens", str(max_tokens), "--temperature", "0"],
                             check=True, capture_output=True, text=True).stdout.removesuffix("\n")
        toks = llm.tokenize(p.encode(), add_bos=True, special=False)
        llm.reset()
        gen = []
        for t in llm.generate(toks, temp=0.0, top_k=1):
            if t == llm.token_eos() or len(gen) >= max_tokens:
                break
            gen.append(t)
        cpp = p + llm.detokenize(gen, prev_tokens=toks).decode(errors="replace")
        same_greedy += own == cpp
        if own != cpp:
            print(f"greedy differs after {p!r}: ferrolm {own!r}, llama.cpp {cpp!r}")
    return same_ids, len(TEXTS), same_greedy, len(PROMPTS)


FTYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama_ftype


def same_types_as_llama_quantizer(f32_path, ours, quant):
    """(tensors whose type and bytes equal llama.cpp's quantizer's, tensors, differences)."""
    import gguf
    import llama_cpp
    out = ours + ".llama-quantize.gguf"
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = FTYPES[quant]
    p.nthread = 2
    if llama_cpp.llama_model_quantize(f32_path.encode(), out.encode(), ctypes.byref(p)) != 0:
        return 0, 0, ["llama_model_quantize failed"]

    def types(path):
        return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in gguf.GGUFReader(path).tensors}
    a, b = types(ours), types(out)
    diffs = [f"{k}: ferrolm {a.get(k)}, llama.cpp {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return len(a) - len(diffs), len(a), diffs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--ferrolm", default=os.environ.get("FERROLM_BIN", "target/release/ferrolm"))
    ap.add_argument("--ids", default=None, help="comma-separated token ids (default: 48 random ids)")
    ap.add_argument("--out", default=None, help="folder for the GGUF files (default: a temporary one)")
    ap.add_argument("--kv-f32", action="store_true", help="llama.cpp's KV cache in f32 (default: its f16)")
    a = ap.parse_args()
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as e:
        print(f"skipping: {e} (install llama-cpp-python[server] and gguf into a venv outside the repo)")
        return 0
    if os.path.exists(os.path.join(a.run, "config.toml")):
        cfg_text = open(os.path.join(a.run, "config.toml")).read()
        vocab = int(next(l.split("=")[1] for l in cfg_text.splitlines() if l.strip().startswith("vocab_size")))
    else:  # a Hugging Face folder
        vocab = json.load(open(os.path.join(a.run, "config.json")))["vocab_size"]
    rng = random.Random(7)
    ids = [int(x) for x in a.ids.split(",")] if a.ids else [rng.randrange(vocab) for _ in range(48)]
    ref = ferrolm_score(a.ferrolm, a.run, ids)
    out_dir = a.out or tempfile.mkdtemp(prefix="ferrolm-gguf-")
    rows = []
    for quant in ["f32", "f16", "q8_0", "q4_k_m"]:
        path = os.path.join(out_dir, f"model-{quant}.gguf")
        subprocess.run([a.ferrolm, "export", "--model", a.run, "--format", "gguf", "--quant", quant, "--out", path], check=True)
        reader = gguf.GGUFReader(path)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        n_tensors = len(reader.tensors)
        lp_cpp, greedy_cpp = llama_logprobs(path, ids, a.kv_f32)
        lp_own = ferrolm_score(a.ferrolm, path, ids)
        d_cpp = max(abs(x - y) for x, y in zip(lp_own, lp_cpp))
        # ferrolm's own greedy choice at each position, from the same GGUF
        d_ref = (sum(ref) - sum(lp_own)) / len(ref) / math.log(2)
        if quant == "f32":
            f32_path = path
            same_types = "—"
        else:
            same, total, diffs = same_types_as_llama_quantizer(f32_path, path, quant)
            same_types = f"{same}/{total}"
            for d in diffs:
                print(f"{quant}: type differs from llama.cpp's quantizer: {d}")
        rows.append((quant, arch, n_tensors, os.path.getsize(path) / 1e6, d_cpp, d_ref, greedy_cpp, same_types))
        if quant == "f32":
            tok_model = bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode()
            parity = tokenizer_and_greedy(a.ferrolm, a.run, path)
    print(f"ids: {len(ids)} tokens, vocab {vocab}; reference: ferrolm score on {a.run}; llama.cpp KV cache {'f32' if a.kv_f32 else 'f16'}")
    print("| GGUF | arch (gguf pkg) | tensors | MB | max |Δ log-prob| ferrolm vs llama.cpp, same file | Δ bits/token vs f32 run (ferrolm) | tensor types = llama.cpp quantizer's |")
    print("|---|---|---|---|---|---|---|")
    for quant, arch, n, mb, d_cpp, d_ref, _, same_types in rows:
        print(f"| {quant} | {arch} | {n} | {mb:.2f} | {d_cpp:.2e} | {d_ref:+.4f} | {same_types} |")
    g32 = rows[0][6]
    for quant, *_rest, greedy, _types in rows[1:]:
        same = sum(x == y for x, y in zip(g32, greedy))
        print(f"llama.cpp greedy next token, {quant} vs f32: {same}/{len(g32)} positions agree")
    ids_same, n_texts, greedy_same, n_prompts = parity
    print(f"f32 file, tokenizer.ggml.model {tok_model!r}: token ids ferrolm (folder) = llama.cpp (file) on {ids_same}/{n_texts} texts; "
          f"greedy {12}-token continuations equal on {greedy_same}/{n_prompts} prompts")
    return 0 if (ids_same, greedy_same) == (n_texts, n_prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
