"""Inference speed on real model shapes: ferrolm vs transformers (PyTorch, f32, CPU) and vs
llama.cpp on the same GGUF files.

    /work/venv-hf/bin/python bench/hf_speed.py [--shapes smollm2-135m qwen2.5-0.5b]
        [--ferrolm target/release/ferrolm] [--threads 2] [--llama-python /work/venv-llama/bin/python]

For each shape (the config.json of SmolLM2-135M and Qwen2.5-0.5B, written here because the
Hub is out of reach; random weights at transformers' init) the script writes a Hugging Face
folder with transformers (and a byte-level BPE tokenizer.json of exactly the vocabulary's
size, generated: byte tokens plus two- and three-character merges, so the GGUF export has a
vocabulary llama.cpp accepts), then measures, alternating the implementations R times:
  - ferrolm: `ferrolm bench generate --model DIR --json` (load, prefill tokens/s, batch-1
    greedy decode tokens/s, peak RSS),
  - transformers: the same prompt length, one forward filling the cache, then one token per
    forward with past_key_values (torch.set_num_threads(threads), f32, eager attention),
  - llama.cpp (llama-cpp-python built from source, in the --llama-python interpreter): the
    f16 / q8_0 / q4_k_m GGUF that `ferrolm export --format gguf` writes, prefill = eval of
    the prompt, decode = one token per eval; and ferrolm on the same GGUF files.
Medians are printed as a table and as JSON lines. Missing peers are skipped with a message.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

SHAPES = {
    "smollm2-135m": dict(arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=True),
}


def byte_level_alphabet():
    """GPT-2's byte → printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(path, vocab_size):
    """A valid byte-level BPE tokenizer.json with exactly vocab_size tokens (the last one
    <|endoftext|>): bytes, then merges of two bytes, then of a pair and a byte."""
    alpha = byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(alpha)}
    merges = []
    want = vocab_size - 1
    pairs = ((a, b) for a in alpha for b in alpha)
    for a, b in pairs:
        if len(vocab) >= want:
            break
        vocab[a + b] = len(vocab)
        merges.append(f"{a} {b}")
    twos = [t for t in list(vocab) if len(t) == 2]
    for ab in twos:
        for c in alpha:
            if len(vocab) >= want:
                break
            vocab[ab + c] = len(vocab)
            merges.append(f"{ab} {c}")
        if len(vocab) >= want:
            break
    vocab["<|endoftext|>"] = len(vocab)
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab["<|endoftext|>"], "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": merges},
    }
    assert len(vocab) == vocab_size, (len(vocab), vocab_size)
    with open(path, "w") as f:
        json.dump(tok, f)


def make_folder(shape, out):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    s = dict(SHAPES[shape])
    arch = s.pop("arch")
    cfg = (LlamaConfig if arch == "llama" else Qwen2Config)(**s, torch_dtype="float32")
    torch.manual_seed(0)
    model = (LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM)(cfg)
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(os.path.join(out, "tokenizer.json"), s["vocab_size"])
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "model_max_length": s["max_position_embeddings"]}, f)
    return sum(p.numel() for p in model.parameters())


HWM_CODE = '''
def hwm():
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its
    # parent's peak (the script that built the model)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
'''

TORCH_CODE = HWM_CODE + r'''
import json, resource, statistics, sys, time, torch
from transformers import AutoModelForCausalLM
folder, threads, prompt, new, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
t0 = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
load = time.perf_counter() - t0
g = torch.Generator().manual_seed(0)
ids = torch.randint(m.config.vocab_size, (1, prompt), generator=g)
pre, dec = [], []
with torch.inference_mode():
    for r in range(repeats + 1):
        t = time.perf_counter()
        out = m(ids, use_cache=True, logits_to_keep=1)  # as generate() does: the last position only
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        p = time.perf_counter() - t
        past = out.past_key_values
        t = time.perf_counter()
        for _ in range(new):
            out = m(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        d = time.perf_counter() - t
        if r:
            pre.append(prompt / p); dec.append(new / d)
print(json.dumps({"impl": "transformers", "torch": torch.__version__, "load_s": load, "prefill_tokens_per_sec": statistics.median(pre),
                  "decode_tokens_per_sec": statistics.median(dec), "peak_rss_bytes": hwm()}))
'''

LLAMA_CODE = HWM_CODE + r'''
import json, resource, statistics, sys, time
from llama_cpp import Llama
path, threads, prompt, new, repeats, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
t0 = time.perf_counter()
llm = Llama(model_path=path, n_ctx=prompt + new + 8, n_threads=threads, n_threads_batch=threads, n_batch=prompt, verbose=False, logits_all=False)
load = time.perf_counter() - t0
import random
random.seed(0)
ids = [random.randrange(vocab - 1) for _ in range(prompt)]
pre, dec = [], []
for r in range(repeats + 1):
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    p = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(new):
        tok = llm.sample(temp=0.0)
        llm.eval([tok])
    d = time.perf_counter() - t
    if r:
        pre.append(prompt / p); dec.append(new / d)
print(json.dumps({"impl": "llama.cpp", "load_s": load, "prefill_tokens_per_sec": statistics.median(pre),
                  "decode_tokens_per_sec": statistics.median(dec), "peak_rss_bytes": hwm()}))
'''


def run_json(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout)[-600:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--ferrolm", default=os.path.join(HERE, "..", "target", "release", "ferrolm"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per measurement (one warm-up before)")
    ap.add_argument("--alternations", type=int, default=2, help="ferrolm and each peer measured alternately this many times")
    ap.add_argument("--llama-python", default="/work/venv-llama/bin/python")
    ap.add_argument("--quants", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    ap.add_argument("--work", help="keep the folders here (default: a temporary folder)")
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    have_llama = os.path.exists(a.llama_python) and subprocess.run([a.llama_python, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    if not have_llama:
        print(f"llama.cpp skipped: no llama_cpp in {a.llama_python}")
    work = a.work or tempfile.mkdtemp(prefix="hf_speed_")
    rows = []
    for shape in a.shapes:
        folder = os.path.join(work, shape)
        if not os.path.exists(os.path.join(folder, "config.json")):
            n = make_folder(shape, folder)
            print(f"{shape}: {n / 1e6:.1f}M parameters written to {folder}", flush=True)
        common = [str(a.prompt), str(a.new), str(a.repeats)]
        fer = lambda model: run_json([a.ferrolm, "bench", "generate", "--model", model, "--prompt-tokens", str(a.prompt),
                                       "--new-tokens", str(a.new), "--repeats", str(a.repeats), "--json"], env)
        results = {"ferrolm f32": [], "transformers f32": []}
        for _ in range(a.alternations):
            results["ferrolm f32"].append(fer(folder))
            results["transformers f32"].append(run_json([sys.executable, "-c", TORCH_CODE, folder, str(a.threads)] + common, env))
        if have_llama:
            for q in a.quants:
                gguf = os.path.join(work, f"{shape}-{q}.gguf")
                if not os.path.exists(gguf):
                    r = subprocess.run([a.ferrolm, "export", "--model", folder, "--format", "gguf", "--quant", q, "--out", gguf], capture_output=True, text=True)
                    if r.returncode != 0:
                        print(f"export {q} failed: {r.stderr[-400:]}")
                        continue
                results[f"ferrolm gguf {q}"] = []
                results[f"llama.cpp {q}"] = []
                for _ in range(a.alternations):
                    results[f"ferrolm gguf {q}"].append(fer(gguf))
                    results[f"llama.cpp {q}"].append(run_json([a.llama_python, "-c", LLAMA_CODE, gguf, str(a.threads)] + common + [str(SHAPES[shape]["vocab_size"])], env))
        for name, rs in results.items():
            ok = [r for r in rs if "error" not in r]
            if not ok:
                print(f"{shape} {name}: failed: {rs[0].get('error', '')[-300:]}")
                continue
            row = {"shape": shape, "impl": name, "runs": len(ok)}
            for k in ["load_s", "prefill_tokens_per_sec", "decode_tokens_per_sec", "peak_rss_bytes"]:
                row[k] = statistics.median(r[k] for r in ok)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| shape | implementation | load s | prefill tok/s | decode tok/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['impl']} | {r['load_s']:.2f} | {r['prefill_tokens_per_sec']:.0f} | {r['decode_tokens_per_sec']:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} |")


if __name__ == "__main__":
    main()
