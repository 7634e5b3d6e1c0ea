#!/usr/bin/env python3
"""Side-by-side training speed: `ferrolm bench train` against the PyTorch peer (bench/train_torch.py).

For each preset the two run ALTERNATELY (ferrolm, pytorch, ferrolm, pytorch, ...) R times with the same
thread count, so machine noise hits both alike; medians and the ratio ferrolm/PyTorch are printed.
Either side may be missing: the script says so and reports the other.

    python3 bench/train_speed.py                       # c1 and c2, 5 repeats, 2 threads
    python3 bench/train_speed.py --presets c2 --repeats 3 --steps-c2 20

Environment:
    FERROLM_BIN      ferrolm binary (default: $CARGO_TARGET_DIR/release/ferrolm, then target/release/ferrolm;
                     built with `cargo build --release -p ferrolm` when missing, unless --no-build)
    BENCH_VENV       venv holding PyTorch (default /work/venv-bench); BENCH_PYTHON overrides the interpreter.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_STEPS = {"c1": 50, "c2": 20}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def find_ferrolm(build):
    if os.environ.get("FERROLM_BIN"):
        path = os.environ["FERROLM_BIN"]
        return path if os.access(path, os.X_OK) else None
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "ferrolm"))
    candidates.append(os.path.join(REPO, "target", "release", "ferrolm"))
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    if not build or not shutil.which("cargo"):
        return None
    log("ferrolm binary not found; building it: cargo build --release -p ferrolm")
    if subprocess.run(["cargo", "build", "--release", "-p", "ferrolm"], cwd=REPO).returncode != 0:
        log("cargo build failed")
        return None
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    return None


def find_torch_python():
    py = os.environ.get("BENCH_PYTHON")
    if not py:
        py = os.path.join(os.environ.get("BENCH_VENV", "/work/venv-bench"), "bin", "python")
    if not os.access(py, os.X_OK):
        return None, f"no Python at {py} (set BENCH_VENV or BENCH_PYTHON)"
    probe = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"{py} cannot import torch"
    return py, probe.stdout.strip()


def ferrolm_bench_usage(binary):
    """The help text of `ferrolm bench train`, or None when this build lacks the command."""
    r = subprocess.run([binary, "bench", "train", "--help"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 and "--preset" in r.stdout else None


def run_json(cmd, env):
    """Run a command that prints one JSON line last; return the parsed object or raise with its output."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in r.stdout.splitlines() if l.strip().startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return json.loads(lines[-1])


def cpu_idle_fraction(seconds=1.0):
    """Share of all cores idle over the next `seconds` (Linux /proc/stat), or None elsewhere."""
    def snap():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals)  # idle + iowait, total
    try:
        i0, t0 = snap()
        time.sleep(seconds)
        i1, t1 = snap()
    except OSError:
        return None
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(min_idle, max_wait):
    """On a shared machine, start a timed run only when the cores are (nearly) free."""
    deadline = time.monotonic() + max_wait
    while True:
        idle = cpu_idle_fraction()
        if idle is None or idle >= min_idle:
            return
        if time.monotonic() > deadline:
            log(f"  (cores still busy, {idle:.0%} idle, after {max_wait:.0f} s of waiting; running anyway)")
            return


def thread_env(threads):
    env = dict(os.environ)
    # candle/rayon, gemm, MKL and OpenMP all read one of these.
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def fmt_rate(x):
    return f"{x:,.0f}" if x is not None else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["c1", "c2"], choices=["c1", "c2"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps-c1", type=int, default=DEFAULT_STEPS["c1"])
    ap.add_argument("--steps-c2", type=int, default=DEFAULT_STEPS["c2"])
    ap.add_argument("--only", choices=["ferrolm", "pytorch"], help="run one side only")
    ap.add_argument("--no-build", action="store_true", help="do not build ferrolm when its binary is missing")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="FRACTION",
                    help="before each run wait until this share of the CPU is idle (e.g. 0.9 on a shared box)")
    ap.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for idle cores per run")
    ap.add_argument("--json-out", help="write all raw runs and medians to this JSON file")
    ap.add_argument("--matmul", choices=["f32", "bf16"], default="f32",
                    help="matrix-product precision on both sides: f32, or bf16 operands with f32 sums "
                         "(ferrolm --matmul bf16 on AMX tiles; PyTorch's mkldnn fp32_precision = 'bf16')")
    ap.add_argument("--peer-matmul", choices=["f32", "bf16"],
                    help="PyTorch's precision when it should differ from --matmul: e.g. --matmul bf16 --peer-matmul "
                         "f32 compares ferrolm on AMX tiles with PyTorch's faster mode on these sizes, exact f32")
    args = ap.parse_args()
    peer_matmul = args.peer_matmul or args.matmul

    env = thread_env(args.threads)
    ferrolm = None if args.only == "pytorch" else find_ferrolm(not args.no_build)
    ferrolm_threads_flag = False
    if args.only == "pytorch":
        log("ferrolm: skipped (--only pytorch)")
    elif ferrolm is None:
        log("ferrolm: binary not found (set FERROLM_BIN); skipping the ferrolm side")
    else:
        usage = ferrolm_bench_usage(ferrolm)
        if usage is None:
            log(f"ferrolm: {ferrolm} has no working `bench train` command yet; skipping the ferrolm side")
            ferrolm = None
        else:
            ferrolm_threads_flag = "--threads" in usage
            log(f"ferrolm: {ferrolm}" + ("" if ferrolm_threads_flag else " (no --threads flag; RAYON_NUM_THREADS set)"))
    py, torch_info = (None, "skipped (--only ferrolm)") if args.only == "ferrolm" else find_torch_python()
    if py is None:
        log(f"PyTorch: {torch_info}; skipping the PyTorch peer")
    else:
        log(f"PyTorch {torch_info}: {py}")
    if ferrolm is None and py is None:
        sys.exit("neither ferrolm bench train nor PyTorch is available: nothing to measure")

    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        log(f"WARNING: load average is {load1:.2f}: other processes compete for the cores, and PyTorch's "
            "OpenMP threads degrade badly under contention; measure on an idle machine")

    results = {}
    for preset in args.presets:
        steps = args.steps_c1 if preset == "c1" else args.steps_c2
        runs = {"ferrolm": [], "pytorch": []}
        for rep in range(args.repeats):
            if ferrolm:
                cmd = [ferrolm, "bench", "train", "--preset", preset, "--steps", str(steps), "--json"]
                if args.matmul != "f32":
                    cmd += ["--matmul", args.matmul]
                if ferrolm_threads_flag:
                    cmd += ["--threads", str(args.threads)]
                if args.wait_idle:
                    wait_idle(args.wait_idle, args.max_wait)
                runs["ferrolm"].append(run_json(cmd, env))
            if py:
                cmd = [py, os.path.join(HERE, "train_torch.py"), "--preset", preset, "--steps", str(steps),
                       "--threads", str(args.threads), "--json", "--breakdown", "--matmul", peer_matmul]
                if args.wait_idle:
                    wait_idle(args.wait_idle, args.max_wait)
                runs["pytorch"].append(run_json(cmd, env))
            done = "  ".join(f"{k} {r[-1]['tokens_per_sec']:,.0f} tok/s" for k, r in runs.items() if r)
            log(f"{preset} repeat {rep + 1}/{args.repeats}: {done}")
        med = {}
        for impl, rs in runs.items():
            if rs:
                med[impl] = {
                    "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in rs),
                    "step_ms_median": statistics.median(r["step_ms_median"] for r in rs),
                    "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in rs),
                    "tokens_per_sec_all": [r["tokens_per_sec"] for r in rs],
                }
                for part in ("forward_ms_median", "backward_ms_median", "optimizer_ms_median"):
                    if all(part in r for r in rs):
                        med[impl][part] = statistics.median(r[part] for r in rs)
        ratio = None
        if "ferrolm" in med and "pytorch" in med:
            ratio = med["ferrolm"]["tokens_per_sec"] / med["pytorch"]["tokens_per_sec"]
        results[preset] = {"steps": steps, "median": med, "ratio_ferrolm_over_pytorch": ratio, "runs": runs}

    print(f"\ntraining tokens/s, medians of {args.repeats} alternating repeats, {args.threads} threads each"
          f" (matmul: ferrolm {args.matmul}, PyTorch {peer_matmul})")
    print(f"{'preset':<7}{'ferrolm':>12}{'pytorch':>12}{'ratio':>8}{'ferrolm RSS':>14}{'pytorch RSS':>14}")
    for preset, r in results.items():
        m = r["median"]
        get = lambda impl, k: m[impl][k] if impl in m else None  # noqa: E731
        rss = lambda impl: f"{get(impl, 'peak_rss_bytes') / 2**20:,.0f} MiB" if impl in m else "-"  # noqa: E731
        ratio = f"{r['ratio_ferrolm_over_pytorch']:.2f}x" if r["ratio_ferrolm_over_pytorch"] else "-"
        print(f"{preset:<7}{fmt_rate(get('ferrolm', 'tokens_per_sec')):>12}{fmt_rate(get('pytorch', 'tokens_per_sec')):>12}"
              f"{ratio:>8}{rss('ferrolm'):>14}{rss('pytorch'):>14}")
    for preset, r in results.items():
        p = r["median"].get("pytorch", {})
        if "forward_ms_median" in p:
            print(f"PyTorch {preset} step breakdown (median ms): forward+loss {p['forward_ms_median']:.1f}, "
                  f"backward {p['backward_ms_median']:.1f}, clip+AdamW+zero_grad {p['optimizer_ms_median']:.1f}, "
                  f"whole step {p['step_ms_median']:.1f}")
    if args.json_out:
        with open(args.json_out + ".tmp", "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "load_avg_at_start": load1, "results": results}, f, indent=1)
        os.replace(args.json_out + ".tmp", args.json_out)


if __name__ == "__main__":
    main()
