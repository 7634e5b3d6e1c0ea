#!/usr/bin/env python3
"""`ferrolm serve` side by side with llama.cpp's server and transformers' server, one model.

The same ferrolm run is served three ways, one server at a time on this machine, and each
is driven by the same load (bench/serve.py's `load`: N concurrent streaming chat clients
through the official `openai` client, requests back to back):
  - ferrolm:           `ferrolm serve --model RUN` (continuous batching);
  - llama.cpp:         `python -m llama_cpp.server` (llama-cpp-python, built from source) on
                       `ferrolm export --format gguf` of the run (f32, or --quant);
  - transformers:      `transformers serve DIR` on `ferrolm export --format hf` of the run,
                       plain and with `--continuous-batching`.
Servers alternate within each repeat; the table gives medians over repeats. Peak RSS is
the server process's (VmHWM). Each peer is skipped with a message when its Python is
missing.

Setup (outside the repository):
  python3 -m venv /work/venv-serve && /work/venv-serve/bin/pip install openai
  python3 -m venv /work/venv-llama && /work/venv-llama/bin/pip install "llama-cpp-python[server]"
  python3 -m venv /work/venv-hf && /work/venv-hf/bin/pip install torch "transformers[serving]"
Run:
  /work/venv-serve/bin/python bench/serve_peers.py --bin target/release/ferrolm --run RUN
Only loopback traffic; every level is bounded in request count.
"""
import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve as ferrolm_bench  # noqa: E402  (bench/serve.py: load, pct, peak_rss_mib, free_port)


class Proc:
    """A server process on a loopback port, ready once it answers GET /v1/models."""

    def __init__(self, name, argv, port, env=None, startup=300):
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}/v1"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        t0 = time.time()
        import urllib.request
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{name} exited: {self.log.read()[-3000:]}")
            if time.time() - t0 > startup:
                self.stop()
                raise RuntimeError(f"{name} did not start in {startup} s")
            time.sleep(0.25)
        self.ready_s = time.time() - t0

    def stop(self):
        rss = ferrolm_bench.peak_rss_mib(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return rss


def export(binary, run, out_dir, quant):
    gguf = os.path.join(out_dir, f"model-{quant}.gguf")
    hf = os.path.join(out_dir, "hf")
    if not os.path.exists(gguf):
        subprocess.run([binary, "export", "--model", run, "--format", "gguf", "--quant", quant, "--out", gguf], check=True)
    if not os.path.exists(os.path.join(hf, "config.json")):
        subprocess.run([binary, "export", "--model", run, "--format", "hf", "--out", hf], check=True)
    return gguf, hf


def servers(a, gguf, hf):
    """name → a function starting that server (or None with the reason it is skipped)."""
    port = ferrolm_bench.free_port
    out = {}
    out["ferrolm"] = lambda: Proc("ferrolm", [a.bin, "serve", "--model", a.run, "--port", str(p := port()), "--model-name", "bench",
                                             "--max-concurrency", "32", "--max-queue", "256"], p, {"RAYON_NUM_THREADS": str(a.threads)})
    if os.path.exists(a.llama_python):
        out["llama.cpp"] = lambda: Proc("llama.cpp", [a.llama_python, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                                                      "--port", str(p := port()), "--model_alias", "bench", "--n_threads", str(a.threads),
                                                      "--n_threads_batch", str(a.threads), "--n_ctx", str(a.ctx), "--verbose", "False",
                                                      # queue concurrent requests (its default cuts the running stream)
                                                      "--interrupt_requests", "False"], p)
    else:
        print(f"skipping llama.cpp: {a.llama_python} not found", file=sys.stderr)
    tf = os.path.join(os.path.dirname(a.hf_python), "transformers")
    if os.path.exists(tf):
        common = ["serve", hf, "--host", "127.0.0.1", "--device", "cpu", "--dtype", "float32", "--log-level", "warning"]
        env = {"OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1"}
        out["transformers"] = lambda: Proc("transformers", [tf, *common, "--port", str(p := port())], p, env)
        out["transformers-cb"] = lambda: Proc("transformers-cb", [tf, *common, "--continuous-batching", "--port", str(p := port())], p, env)
    else:
        print(f"skipping transformers: {tf} not found", file=sys.stderr)
    return out


async def warm(base, model):
    import openai
    c = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
    await c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    await c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/ferrolm")
    ap.add_argument("--run", required=True, help="a ferrolm run (a Transformer decoder with a chat template)")
    ap.add_argument("--work", default=None, help="folder for the exports (default: RUN/peers)")
    ap.add_argument("--quant", default="f32", help="the GGUF precision llama.cpp serves (f32, f16, q8_0, q4_k_m)")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--per-client", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads of every server (ferrolm: RAYON_NUM_THREADS; llama.cpp: --n_threads; torch: OMP_NUM_THREADS)")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--only", default="", help="comma-separated server names to run")
    ap.add_argument("--client", choices=["openai", "raw"], default="openai",
                    help="load client (bench/serve.py): the official openai client or the raw event-stream reader that needs a tenth of its CPU")
    ap.add_argument("--llama-python", default="/work/venv-llama/bin/python")
    ap.add_argument("--hf-python", default="/work/venv-hf/bin/python")
    a = ap.parse_args()

    work = a.work or os.path.join(a.run, "peers")
    os.makedirs(work, exist_ok=True)
    gguf, hf = export(a.bin, a.run, work, a.quant)
    start = servers(a, gguf, hf)
    if a.only:
        start = {k: v for k, v in start.items() if k in a.only.split(",")}
    levels = [int(x) for x in a.levels.split(",")]
    results = {}  # (server, clients) → list of rows
    rss = {}
    for rep in range(a.repeats):
        for name, make in start.items():
            try:
                srv = make()
            except RuntimeError as e:
                print(f"{name}: {e}", file=sys.stderr)
                continue
            try:
                asyncio.run(warm(srv.base, "bench" if name in ("ferrolm", "llama.cpp") else hf))
                for c in levels:
                    per = a.per_client or max(1, 8 // c) * 2
                    r = asyncio.run(ferrolm_bench.load(srv.base, c, per, a.max_tokens, model="bench" if name in ("ferrolm", "llama.cpp") else hf,
                                                      client_kind=a.client))
                    results.setdefault((name, c), []).append(r)
                    print(f"[{rep + 1}/{a.repeats}] {name:>15} {c:>3} clients: {r['tok_s']:.1f} tok/s, {r['tokens_per_request']:.1f} tok/request, "
                          f"TTFT p50 {r['ttft_p50'] * 1e3:.0f} ms p99 {r['ttft_p99'] * 1e3:.0f} ms, ITL p50 {r['itl_p50'] * 1e3:.1f} ms "
                          f"p99 {r['itl_p99'] * 1e3:.1f} ms, errors {r['errors']} (load {os.getloadavg()[0]:.1f})", flush=True)
            finally:
                rss.setdefault(name, []).append(srv.stop())
    med = statistics.median
    print(f"\nmedians over {a.repeats} repeats; llama.cpp on the {a.quant} GGUF export, transformers on the f32 HF export")
    print("| server | clients | output tok/s | tokens/request | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | errors | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in start:
        for c in levels:
            rows = results.get((name, c))
            if not rows:
                continue
            g = lambda k: med([r[k] for r in rows])  # noqa: E731
            print(f"| {name} | {c} | {g('tok_s'):.1f} | {g('tokens_per_request'):.1f} | {g('ttft_p50') * 1e3:.0f} ms | {g('ttft_p99') * 1e3:.0f} ms | "
                  f"{g('itl_p50') * 1e3:.1f} ms | {g('itl_p99') * 1e3:.1f} ms | {sum(r['errors'] for r in rows)} | {med(rss[name]):.0f} MiB |")


if __name__ == "__main__":
    main()
