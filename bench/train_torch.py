#!/usr/bin/env python3
"""PyTorch peer of `ferrolm bench train`: tokens/s of full training steps on random token batches.

One timed step = forward + loss, backward, gradient clipping (global norm 1.0), AdamW step, zero_grad,
exactly what a training loop does per optimizer step. Batches are drawn before the timer starts.
Prints one JSON line with the same keys as `ferrolm bench train --json`.

    python bench/train_torch.py --preset c1 --steps 50 --threads 2 --json
    python bench/train_torch.py --preset c2 --steps 20 --threads 2 --breakdown
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from gpt_torch import PRESETS, Gpt, make_adamw  # noqa: E402

# Peak RSS once torch is imported, before any model exists: the PyPI wheel maps large CUDA/MKL
# libraries even on CPU, so peak_rss_bytes - import_rss_bytes is what the training itself used.
IMPORT_RSS_BYTES = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="c1")
    ap.add_argument("--steps", type=int, default=50, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, caches)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    ap.add_argument("--matmul", choices=["f32", "bf16"], default="f32",
                    help="bf16: oneDNN matmuls with bf16 operands and f32 sums "
                         "(torch.backends.mkldnn.matmul.fp32_precision = 'bf16'), as ferrolm's --matmul bf16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (off by default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bench/gpu.sh); timings synchronize the GPU")
    ap.add_argument("--autocast-bf16", action="store_true", help="on cuda: bf16 autocast, as a PyTorch user trains")
    ap.add_argument("--fused-adamw", choices=["default", "on", "off"], default="default",
                    help="AdamW implementation: PyTorch's default choice, or force fused on/off")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time forward / backward / optimizer separately (adds syncs of no cost on CPU)")
    return ap.parse_args()


def set_matmul_precision(mode):
    """PyTorch's own knob for bf16 matrix products in f32 models on CPU (AMX where present)."""
    if mode == "bf16":
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"


def main():
    args = parse_args()
    if args.steps < 1:
        sys.exit("--steps must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    set_matmul_precision(args.matmul)
    cfg, batch = PRESETS[args.preset]

    dev = torch.device(args.device)
    model = Gpt(cfg).to(dev)
    model.train()
    fused = {"default": None, "on": True, "off": False}[args.fused_adamw]
    opt = make_adamw(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), fused=fused)
    step_model = torch.compile(model) if args.compile else model

    gen = torch.Generator().manual_seed(args.seed)
    total = args.warmup + args.steps
    batches = [
        (torch.randint(cfg.vocab_size, (batch, cfg.block_size), generator=gen),
         torch.randint(cfg.vocab_size, (batch, cfg.block_size), generator=gen))
        for _ in range(total)
    ]
    batches = [(x.to(dev), y.to(dev)) for x, y in batches]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    import contextlib
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.autocast_bf16 and dev.type == "cuda" else contextlib.nullcontext

    step_ms, fwd_ms, bwd_ms, opt_ms = [], [], [], []
    loss_val = float("nan")
    for i, (x, y) in enumerate(batches):
        sync()
        t0 = time.perf_counter()
        with autocast():
            _, loss = step_model(x, y)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        loss_val = loss.item()
        if i >= args.warmup:
            step_ms.append((t3 - t0) * 1e3)
            fwd_ms.append((t1 - t0) * 1e3)
            bwd_ms.append((t2 - t1) * 1e3)
            opt_ms.append((t3 - t2) * 1e3)

    tokens_per_step = batch * cfg.block_size
    result = {
        "impl": "pytorch",
        "torch_version": torch.__version__,
        "preset": args.preset,
        "steps": args.steps,
        "threads": args.threads,
        "params": model.num_params(),
        "tokens_per_step": tokens_per_step,
        # Throughput over the whole timed span (sum of step times), not the best step.
        "tokens_per_sec": tokens_per_step * len(step_ms) / (sum(step_ms) / 1e3),
        "step_ms_median": statistics.median(step_ms),
        "step_ms_mean": statistics.fmean(step_ms),
        # Linux reports ru_maxrss in KiB.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "import_rss_bytes": IMPORT_RSS_BYTES,
        "final_loss": loss_val,
        "compile": args.compile,
        "device": args.device,
        "autocast_bf16": args.autocast_bf16,
    }
    if args.breakdown:
        result["forward_ms_median"] = statistics.median(fwd_ms)
        result["backward_ms_median"] = statistics.median(bwd_ms)
        result["optimizer_ms_median"] = statistics.median(opt_ms)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v:.4g}" if isinstance(v, float) else f"{k:>20}: {v}")


if __name__ == "__main__":
    main()
