"""LoRA training speed: `ferrolm bench lora` vs transformers + PEFT on the same model folder.

    /work/venv-hf/bin/python bench/lora_speed.py --model DIR [--ferrolm target/release/ferrolm]
        [--rank 16] [--batch 4] [--seq-len 256] [--steps 5] [--repeats 3] [--threads 2] [--matmul f32|bf16]
        [--dropout 0.05]

DIR is a Hugging Face model folder (bench/hf_speed.py --work DIR writes SmolLM2-135M's shape
with random weights). Both sides train rank-r adapters (alpha 2r, adapter dropout `--dropout`,
0 by default) on every
linear layer of the blocks (q, k, v, o, gate, up, down) with the base frozen, on random
tokens, full-sequence next-token loss, gradient clipping at 1.0 and AdamW; a step is
forward, backward, clip, AdamW, zero-grad. The two run alternately `repeats` times (so
machine noise hits both alike); medians of tokens/s are printed with the ratio.
`--matmul bf16` runs both in their bf16-product mode (f32 weights and activations, each
product's operands rounded to bf16, sums in f32, on AMX tiles where the CPU has them):
ferrolm's `train.matmul_precision = "bf16"`, PyTorch's
`torch.backends.mkldnn.matmul.fp32_precision = "bf16"`.
`--qlora q8_0 q4_k` adds ferrolm runs whose frozen base is held quantized (`lora.quant`,
QLoRA) to each round, reported beside the f32 ones: their products are not PEFT's f32
arithmetic, so they are information (speed and memory of QLoRA), not the comparison.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

PEFT_CODE = r'''
import json, resource, sys, time, torch
def hwm():
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its
    # parent's peak (the script that built the model)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
folder, threads, rank, batch, seq, steps, matmul, dropout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], float(sys.argv[8])
torch.set_num_threads(threads)
if matmul == "bf16":
    # f32 tensors, products on bf16 operands with f32 sums (oneDNN, AMX where the CPU has
    # it): what ferrolm's train.matmul_precision = "bf16" does
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
m = get_peft_model(m, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
m.train()
params = [p for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
g = torch.Generator().manual_seed(0)
vocab = m.config.vocab_size
times = []
for i in range(steps + 2):
    ids = torch.randint(vocab, (batch, seq + 1), generator=g)
    t = time.perf_counter()
    logits = m(input_ids=ids[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= 2:
        times.append(time.perf_counter() - t)
print(json.dumps({"impl": "transformers+peft", "torch": torch.__version__, "matmul": matmul, "dropout": dropout, "adapter_params": sum(p.numel() for p in params),
                  "tokens_per_sec": batch * seq * len(times) / sum(times), "step_ms_median": sorted(times)[len(times) // 2] * 1e3,
                  "peak_rss_bytes": hwm()}))
'''


def run_json(cmd, env):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} failed:\n{(r.stderr or r.stdout)[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ferrolm", default=os.path.join(HERE, "..", "target", "release", "ferrolm"))
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--matmul", choices=["f32", "bf16"], default="f32",
                    help="bf16: both sides multiply bf16-rounded operands with f32 sums (AMX tiles where the CPU has them)")
    ap.add_argument("--dropout", type=float, default=0.0, help="adapter dropout on both sides (lora.dropout / lora_dropout)")
    ap.add_argument("--qlora", nargs="*", default=[], choices=["q8_0", "q4_k", "f16"],
                    help="also run ferrolm with the base held quantized (lora.quant), for information")
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    try:
        import peft  # noqa: F401
    except ImportError:
        print("transformers+peft skipped: pip install torch transformers peft")
        return
    fer, pt = [], []
    qlora = {q: [] for q in a.qlora}
    fer_cmd = [a.ferrolm, "bench", "lora", "--model", a.model, "--rank", str(a.rank), "--alpha", str(2 * a.rank), "--batch", str(a.batch),
               "--seq-len", str(a.seq_len), "--steps", str(a.steps), "--matmul", a.matmul, "--dropout", str(a.dropout), "--json"]
    for _ in range(a.repeats):
        fer.append(run_json(fer_cmd, env))
        print(json.dumps(fer[-1]), flush=True)
        for q in a.qlora:
            qlora[q].append(run_json(fer_cmd + ["--quant", q], env))
            print(json.dumps(qlora[q][-1]), flush=True)
        pt.append(run_json([sys.executable, "-c", PEFT_CODE, a.model, str(a.threads), str(a.rank), str(a.batch), str(a.seq_len), str(a.steps), a.matmul, str(a.dropout)], env))
        print(json.dumps(pt[-1]), flush=True)
    f = statistics.median(r["tokens_per_sec"] for r in fer)
    p = statistics.median(r["tokens_per_sec"] for r in pt)
    print(f"\nadapter parameters: ferrolm {fer[0]['adapter_params']}, PEFT {pt[0]['adapter_params']}")
    print(f"tokens/s (median of {a.repeats}): ferrolm {f:.0f}, transformers+PEFT {p:.0f}, ratio {f / p:.2f}x")
    print(f"peak RSS MiB: ferrolm {statistics.median(r['peak_rss_bytes'] for r in fer) / 2**20:.0f}, "
          f"transformers+PEFT {statistics.median(r['peak_rss_bytes'] for r in pt) / 2**20:.0f}")
    for q, rs in qlora.items():
        t = statistics.median(r["tokens_per_sec"] for r in rs)
        print(f"QLoRA, base held {q} (ferrolm, information): {t:.0f} tokens/s ({t / f:.2f}x ferrolm f32), "
              f"peak RSS {statistics.median(r['peak_rss_bytes'] for r in rs) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
