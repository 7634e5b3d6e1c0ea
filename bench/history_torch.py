#!/usr/bin/env python3
"""Recurrent LM training speed: `ferrolm bench recurrent` against PyTorch's nn.LSTM / nn.RNN.

The same model on both sides: Embedding(V, E) -> 1..L recurrent layers (state H, zero initial
state per window of T tokens) -> Linear(H, V), next-token cross-entropy, AdamW(0.9, 0.99),
lr 1e-3, weight decay 0.1, gradient clipping 1.0, random tokens, batch B. The two run
ALTERNATELY R times with the same thread count; medians and the ratio ferrolm/PyTorch are printed.

    python3 bench/history_torch.py                          # LSTM E=128 H=384 V=4096 B=32 T=64, 2 threads, 5 repeats
    python3 bench/history_torch.py --family rnn --repeats 3

Environment: FERROLM_BIN (default $CARGO_TARGET_DIR/release/ferrolm, then target/release/ferrolm);
BENCH_VENV (venv with torch, default /work/venv-bench) or BENCH_PYTHON. A missing side is skipped
with a message.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def torch_worker(a):
    """Runs inside the torch venv: time training steps of the PyTorch model, print one JSON line."""
    import resource
    import torch
    import torch.nn as nn

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    class Lm(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(a.vocab, a.embed)
            rnn = nn.LSTM if a.family == "lstm" else nn.RNN
            self.rnn = rnn(a.embed, a.hidden, num_layers=a.layers, batch_first=True)
            self.head = nn.Linear(a.hidden, a.vocab)

        def forward(self, x, y):
            h, _ = self.rnn(self.wte(x))
            logits = self.head(h)
            return nn.functional.cross_entropy(logits.reshape(-1, a.vocab), y.reshape(-1))

    model = Lm()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    warm = 2
    times = []
    for i in range(warm + a.steps):
        x = torch.randint(a.vocab, (a.batch, a.seq_len), generator=gen)
        y = torch.randint(a.vocab, (a.batch, a.seq_len), generator=gen)
        t0 = time.perf_counter()
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warm:
            times.append(time.perf_counter() - t0)
    tokens = a.batch * a.seq_len
    print(json.dumps({
        "impl": "pytorch", "torch_version": torch.__version__, "family": a.family,
        "params": sum(p.numel() for p in model.parameters()), "threads": a.threads,
        "tokens_per_sec": tokens * len(times) / sum(times),
        "step_ms_median": statistics.median(times) * 1e3,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


def find_ferrolm():
    if os.environ.get("FERROLM_BIN"):
        return os.environ["FERROLM_BIN"] if os.access(os.environ["FERROLM_BIN"], os.X_OK) else None
    for base in (os.environ.get("CARGO_TARGET_DIR"), os.path.join(REPO, "target")):
        if base and os.access(os.path.join(base, "release", "ferrolm"), os.X_OK):
            return os.path.join(base, "release", "ferrolm")
    return None


def find_torch_python():
    py = os.environ.get("BENCH_PYTHON") or os.path.join(os.environ.get("BENCH_VENV", "/work/venv-bench"), "bin", "python")
    if not os.access(py, os.X_OK):
        return None, f"no Python at {py} (set BENCH_VENV or BENCH_PYTHON)"
    probe = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"{py} cannot import torch"
    return py, probe.stdout.strip()


def run_json(cmd, env):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in r.stdout.splitlines() if l.strip().startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["lstm", "rnn"], default="lstm")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_worker:
        return torch_worker(a)

    env = dict(os.environ)
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(a.threads)
    shape = ["--family", a.family, "--vocab", str(a.vocab), "--embed", str(a.embed), "--hidden", str(a.hidden),
             "--layers", str(a.layers), "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--steps", str(a.steps)]
    ferrolm = find_ferrolm()
    if ferrolm is None:
        log("ferrolm binary not found (set FERROLM_BIN or build with cargo build --release -p ferrolm); skipping it")
    py, info = find_torch_python()
    if py is None:
        log(f"PyTorch: {info}; skipping the PyTorch peer")
    else:
        log(f"PyTorch {info}: {py}")
    if ferrolm is None and py is None:
        sys.exit("nothing to measure")
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        log(f"WARNING: load average {load1:.2f}: other processes compete for the cores; figures are noisy")
    runs = {"ferrolm": [], "pytorch": []}
    for rep in range(a.repeats):
        if ferrolm:
            runs["ferrolm"].append(run_json([ferrolm, "bench", "recurrent", "--json"] + shape, env))
        if py:
            runs["pytorch"].append(run_json([py, os.path.abspath(__file__), "--torch-worker", "--threads", str(a.threads)] + shape, env))
        log(f"repeat {rep + 1}/{a.repeats}: " + "  ".join(f"{k} {r[-1]['tokens_per_sec']:,.0f} tok/s" for k, r in runs.items() if r))
    med = {k: statistics.median(r["tokens_per_sec"] for r in rs) for k, rs in runs.items() if rs}
    for k, v in med.items():
        log(f"{k}: median {v:,.0f} tokens/s over {len(runs[k])} runs ({runs[k][0]['params']:,} parameters)")
    if len(med) == 2:
        log(f"ratio ferrolm/PyTorch: {med['ferrolm'] / med['pytorch']:.2f}")
    print(json.dumps({"config": vars(a), "median_tokens_per_sec": med, "runs": runs}))


if __name__ == "__main__":
    main()
