"""LoRA adapters trained by ferrolm, loaded by PEFT onto the same base: same log-probs?

    /work/venv-hf/bin/python bench/lora_peft.py [--ferrolm target/release/ferrolm] [--base RUN]

For each base — the committed Hugging Face fixtures gpt2_tied (GPT-2: q/k/v adapters become
one c_attn adapter) and qwen2_tied (q/k/v biases), and optionally a ferrolm run (--base,
exported with `ferrolm export --format hf` first) — the script
  1. runs `ferrolm sft --set lora.rank=8 …` on generated instruction records,
  2. scores a text with the LoRA run (`ferrolm score --json`: the adapters folded in),
  3. loads the base with transformers and the run's `adapter/` with
     `PeftModel.from_pretrained`, scores the same token ids, and reports max |Δ log-prob|,
  4. does the same with `ferrolm export --format peft` and with the merged model from
     `ferrolm export --format hf --merge-lora` loaded by plain transformers.
Needs torch, transformers and peft; skips with a message when they are missing.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

try:
    import torch
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e} (pip install torch transformers peft)")
    sys.exit(0)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "crates", "model", "tests", "fixtures", "hf")
TEXT = "The cat sat on the mat. Repeat the word dog: dog dog."


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return r


def records(path, n=200):
    words = ["red", "blue", "green", "cat", "dog", "sky", "grass", "moon", "river", "bird"]
    with open(path, "w") as f:
        for i in range(n):
            w = words[i % len(words)]
            f.write(json.dumps({"instruction": f"Repeat the word {w} twice.", "input": "", "output": f"{w} {w}"}) + "\n")


def logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


def check(ferrolm, name, base_hf, work):
    data = os.path.join(work, "instr.jsonl")
    records(data)
    out = os.path.join(work, f"lora-{name}")
    r = run([ferrolm, "sft", "--model", base_hf, "--data", data, "--out", out, "--quiet",
             "--set", "lora.rank=8", "--set", "lora.alpha=16", "--set", "lora.dropout=0.05",
             "--set", "train.max_steps=40", "--set", "train.lr=0.01", "--set", "train.batch_size=8",
             "--set", "train.eval_interval=0", "--set", "sft.samples=0"])
    lora_line = next((l for l in r.stderr.splitlines() if l.startswith("LoRA")), "")
    ref = json.loads(run([ferrolm, "score", "--model", out, "--text", TEXT, "--json"]).stdout)
    ids = ref["token_ids"]
    dtype = torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_hf, attn_implementation="eager", dtype=dtype).eval()
    plain = logprobs(base, ids)
    peft_dir = os.path.join(work, f"peft-{name}")
    run([ferrolm, "export", "--model", out, "--format", "peft", "--out", peft_dir])
    res = {"base": name, "lora": lora_line, "tokens": len(ids),
           "adapters_change_logprobs": max(abs(a - b) for a, b in zip(plain, ref["logprobs"]))}
    for label, adir in [("run adapter/", os.path.join(out, "adapter")), ("export --format peft", peft_dir)]:
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_hf, attn_implementation="eager", dtype=dtype), adir).eval()
        got = logprobs(m, ids)
        res[f"peft[{label}] max_abs_diff"] = max(abs(a - b) for a, b in zip(got, ref["logprobs"]))
    merged = os.path.join(work, f"merged-{name}")
    run([ferrolm, "export", "--model", out, "--format", "hf", "--merge-lora", "--out", merged])
    m = AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager", dtype=dtype).eval()
    res["merged export max_abs_diff"] = max(abs(a - b) for a, b in zip(logprobs(m, ids), ref["logprobs"]))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ferrolm", default=os.path.join(HERE, "..", "target", "release", "ferrolm"))
    ap.add_argument("--base", help="a ferrolm run folder (modern blocks) to use as a third base")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        bases = [("gpt2_tied", os.path.join(FIXTURES, "gpt2_tied")), ("qwen2_tied", os.path.join(FIXTURES, "qwen2_tied"))]
        if a.base:
            hf = os.path.join(work, "base-hf")
            run([a.ferrolm, "export", "--model", a.base, "--format", "hf", "--out", hf])
            bases.append((os.path.basename(a.base.rstrip("/")), hf))
        for name, path in bases:
            rows.append(check(a.ferrolm, name, path, work))
            print(json.dumps(rows[-1]), flush=True)
    ok = all(v < 1e-4 for r in rows for k, v in r.items() if k.endswith("max_abs_diff"))
    print("all within 1e-4" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
