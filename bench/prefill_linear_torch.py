"""PyTorch's F.linear on the products of a 128-token prompt at SmolLM2-135M's and
Qwen2.5-0.5B's shapes (fused q/k/v and gate/up, as ferrolm runs them): the peer of
`cargo run --release -p ferrolm-kernels --example prefill_kernels` (same shapes, same table).

    /work/venv-hf/bin/python bench/prefill_linear_torch.py [THREADS]
"""
import statistics
import sys
import time

try:
    import torch
except ImportError:
    print("skipped: no torch in this Python (install it in a venv outside the repo)")
    sys.exit(0)

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
ROWS = 128
SHAPES = [("smollm2-135m", "qkv", 960, 576), ("smollm2-135m", "o", 576, 576), ("smollm2-135m", "gate+up", 3072, 576),
          ("smollm2-135m", "down", 576, 1536), ("qwen2.5-0.5b", "qkv", 1152, 896), ("qwen2.5-0.5b", "o", 896, 896),
          ("qwen2.5-0.5b", "gate+up", 9728, 896), ("qwen2.5-0.5b", "down", 896, 4864)]
print(f"| shape | product (n × k) | rows | median µs | fastest µs | GFLOP/s (median) |  (torch {torch.__version__})")
print("|---|---|---|---|---|---|")
for shape, name, n, k in SHAPES:
    w, x = torch.randn(n, k), torch.randn(ROWS, k)
    for _ in range(4):
        torch.nn.functional.linear(x, w)
    ts = []
    for _ in range(30):
        t = time.perf_counter()
        torch.nn.functional.linear(x, w)
        ts.append(time.perf_counter() - t)
    m = statistics.median(ts)
    print(f"| {shape} | {name} {n}×{k} | {ROWS} | {m * 1e6:.0f} | {min(ts) * 1e6:.0f} | {2 * ROWS * n * k / m / 1e9:.1f} |")
