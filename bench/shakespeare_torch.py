#!/usr/bin/env python3
"""PyTorch reference of nanoGPT's Shakespeare-char CPU recipe, for the "Learning" target of issue 2.

The recipe (nanoGPT README, CPU command, with config/train_shakespeare_char.py):
  character vocabulary from the text, first 90% train / last 10% validation,
  batch 12, context 64, 4 layers, 4 heads, width 128, dropout 0,
  AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1, grad clip 1.0,
  linear warmup over 100 iterations, cosine decay to 1e-4 at iteration 2000, 2000 iterations.
Validation loss at the end is the mean over 200 random validation batches.
Prints one JSON line (--json) with val_loss, train_loss and wall times.
"""

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from gpt_torch import GptConfig, Gpt, make_adamw  # noqa: E402

# ../shared/data beside the repository (a checkout in a worktree folder may be one level deeper).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = next(
    (p for p in (os.path.join(_REPO, "..", "shared", "data", "tinyshakespeare"),
                 os.path.join(_REPO, "..", "..", "shared", "data", "tinyshakespeare"))
     if os.path.isdir(p)),
    os.path.join(_REPO, "..", "shared", "data", "tinyshakespeare"),
)


def find_text(path):
    """Accept the text file itself or the folder that holds it (the only .txt there)."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        txts = sorted(f for f in os.listdir(path) if f.endswith(".txt"))
        if len(txts) == 1:
            return os.path.join(path, txts[0])
        sys.exit(f"{path}: expected exactly one .txt file, found {txts}")
    sys.exit(f"{path}: no such file or folder (pass --data)")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("SHAKESPEARE", DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100, help="nanoGPT's warmup_iters")
    ap.add_argument("--lr-decay-iters", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--eval-iters", type=int, default=200)
    ap.add_argument("--log-interval", type=int, default=250)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--matmul", choices=["f32", "bf16"], default="f32",
                    help="bf16: oneDNN matmuls with bf16 operands and f32 sums, as ferrolm's train.matmul_precision")
    return ap.parse_args()


def lr_at(it, a):
    """nanoGPT's schedule: linear warmup, cosine decay to min_lr, then flat."""
    if it < a.warmup:
        return a.lr * (it + 1) / (a.warmup + 1)
    if it > a.lr_decay_iters:
        return a.min_lr
    ratio = (it - a.warmup) / (a.lr_decay_iters - a.warmup)
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.lr - a.min_lr)


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.matmul == "bf16":
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    t_start = time.perf_counter()

    with open(find_text(a.data), encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_train = int(0.9 * len(ids))
    splits = {"train": ids[:n_train], "val": ids[n_train:]}

    def get_batch(split):
        data = splits[split]
        starts = torch.randint(len(data) - a.block, (a.batch,))
        x = torch.stack([data[s:s + a.block] for s in starts])
        y = torch.stack([data[s + 1:s + 1 + a.block] for s in starts])
        return x, y

    cfg = GptConfig(n_layer=4, n_head=4, n_embd=128, block_size=a.block, vocab_size=len(chars))
    model = Gpt(cfg)
    opt = make_adamw(model, lr=a.lr, weight_decay=0.1, betas=(0.9, 0.99))

    @torch.no_grad()
    def estimate_loss(split):
        model.eval()
        losses = [model(*get_batch(split))[1].item() for _ in range(a.eval_iters)]
        model.train()
        return sum(losses) / len(losses)

    t_train = time.perf_counter()
    for it in range(a.iters):
        for group in opt.param_groups:
            group["lr"] = lr_at(it, a)
        x, y = get_batch("train")
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not a.json and a.log_interval and it % a.log_interval == 0:
            print(f"iter {it:5d}  loss {loss.item():.4f}  lr {lr_at(it, a):.2e}  "
                  f"{time.perf_counter() - t_train:6.1f}s", flush=True)
    train_s = time.perf_counter() - t_train

    t_eval = time.perf_counter()
    val_loss = estimate_loss("val")
    train_loss = estimate_loss("train")
    eval_s = time.perf_counter() - t_eval

    result = {
        "impl": "pytorch",
        "torch_version": torch.__version__,
        "vocab_size": len(chars),
        "params": model.num_params(),
        "iters": a.iters,
        "threads": a.threads,
        "val_loss": val_loss,
        "train_loss": train_loss,
        "train_seconds": train_s,
        "eval_seconds": eval_s,
        "wall_seconds": time.perf_counter() - t_start,
    }
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>14}: {v:.4f}" if isinstance(v, float) else f"{k:>14}: {v}")


if __name__ == "__main__":
    main()
