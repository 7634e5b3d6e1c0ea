#!/usr/bin/env python3
"""Side-by-side corpus pipeline benchmark: ferrolm data vs datatrove on the same input.

Input: Cargo-registry sources of this workspace's Cargo.lock (what `ferrolm quickstart` reads),
as JSONL, cut to --mb megabytes. Two comparisons, each repeated (medians reported), alternating:
  filters: Gopher repetition + Gopher quality + C4 + FineWeb + PII (e-mail, IP), writing kept JSONL
  minhash: near-duplicate removal (5-gram shingles, 14 bands x 8 rows, no similarity check,
           datatrove's MinhashConfig defaults) as separate stages, writing kept JSONL
  minhash_exact: ferrolm's default (32 x 8 bands, candidates verified at Jaccard >= 0.8) against
           the same datatrove run
ferrolm runs with 1 thread (per-core ratio) and with all cores (scaling).
The peer is looked up in a venv outside the repository (--venv, default /work/venv-corpus);
without it, ferrolm's figures are printed and the peer is skipped with a message.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ferrolm_bin():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    b = target / "release" / "ferrolm"
    if not b.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "ferrolm"], cwd=ROOT, check=True)
    return b


def timed(cmd, env=None):
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")
    return dt, r


def count_lines(folder):
    n = 0
    for p in Path(folder).rglob("*.jsonl"):
        if p.name.startswith("."):
            continue
        with open(p, "rb") as f:
            n += sum(1 for _ in f)
    return n


FILTERS_TOML = """
[[source]]
name = "auto"
paths = ["{inp}"]
[[step]]
kind = "gopher_repetition"
[[step]]
kind = "gopher_quality"
[[step]]
kind = "c4"
[[step]]
kind = "fineweb"
[[step]]
kind = "privacy"
kinds = ["email", "ip_address"]
"""

# ferrolm's default near-duplicate step: candidates verified against Jaccard >= 0.8 (exact where
# the sketch cannot decide). datatrove has no verification; it is run with its defaults as above.
MINHASH_EXACT_TOML = """
[[source]]
name = "auto"
paths = ["{inp}"]
[[step]]
kind = "minhash_dedup"
"""

MINHASH_TOML = """
[[source]]
name = "auto"
paths = ["{inp}"]
[[step]]
kind = "minhash_dedup"
bands = 14
rows = 8
threshold = 0.0
"""

DT_FILTERS = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.filters import GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter, FineWebQualityFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.writers import JsonlWriter
inp, out, logs = sys.argv[1:4]
LocalPipelineExecutor(pipeline=[JsonlReader(inp), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
    FineWebQualityFilter(), PIIFormatter(), JsonlWriter(out, compression=None)], tasks=1, workers=1, logging_dir=logs).run()
"""

DT_MINHASH = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig
inp, out, work = sys.argv[1:4]
cfg = MinhashConfig()
s1 = LocalPipelineExecutor(pipeline=[JsonlReader(inp), MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)], tasks=1, workers=1, logging_dir=f"{work}/l1")
s2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)], tasks=cfg.num_buckets, workers=1, logging_dir=f"{work}/l2", depends=s1)
s3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=cfg)], tasks=1, workers=1, logging_dir=f"{work}/l3", depends=s2)
s4 = LocalPipelineExecutor(pipeline=[JsonlReader(inp), MinhashDedupFilter(input_folder=f"{work}/remove_ids"), JsonlWriter(out, compression=None)], tasks=1, workers=1, logging_dir=f"{work}/l4", depends=s3)
s4.run()
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=20.0, help="input size in MB (datatrove runs at ~0.7 MB/s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--venv", default="/work/venv-corpus")
    ap.add_argument("--only", choices=["filters", "minhash", "minhash_exact"], default=None)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()

    fl = ferrolm_bin()
    work = Path(tempfile.mkdtemp(prefix="ferrolm-corpus-bench-"))
    full = work / "cargo.jsonl"
    timed([fl, "data", "cargo", "--lockfile", ROOT / "Cargo.lock", "--out", full])
    inp = work / "input"
    inp.mkdir()
    limit, size, docs = a.mb * 1e6, 0, 0
    with open(full) as src, open(inp / "input.jsonl", "w") as dst:
        for line in src:
            if size >= limit:
                break
            size += len(json.loads(line)["text"].encode())
            docs += 1
            dst.write(line)
    print(f"input: {docs} documents, {size / 1e6:.1f} MB of text (Cargo-registry sources of Cargo.lock)")

    py = Path(a.venv) / "bin" / "python"
    have_dt = py.exists() and subprocess.run([py, "-c", "import datatrove.pipeline.filters"], capture_output=True).returncode == 0
    if not have_dt:
        print(f"datatrove not found in {a.venv} (python -m venv {a.venv} && {a.venv}/bin/pip install 'datatrove[processing]'); peer skipped")
    ncpu = os.cpu_count() or 1
    results = {}
    tomls = {"filters": FILTERS_TOML, "minhash": MINHASH_TOML, "minhash_exact": MINHASH_EXACT_TOML}
    for bench in ["filters", "minhash", "minhash_exact"]:
        if a.only and bench != a.only:
            continue
        cfg = work / f"{bench}.toml"
        cfg.write_text(tomls[bench].format(inp=inp))
        script = work / f"dt_{bench}.py"
        script.write_text(DT_FILTERS if bench == "filters" else DT_MINHASH)
        runs = {"ferrolm 1 thread": [], f"ferrolm {ncpu} threads": [], "datatrove 1 task": []}
        kept = {}
        for rep in range(a.repeats):
            for name in runs:
                out = work / f"out-{bench}-{rep}-{name.split()[0]}-{name.split()[1]}"
                if name.startswith("ferrolm"):
                    env = dict(os.environ, RAYON_NUM_THREADS=name.split()[1])
                    dt, _ = timed([fl, "data", "build", "--config", cfg, "--out", out, "--set", "write_excluded=false"], env=env)
                    kept[name] = count_lines(out / "kept")
                elif have_dt:
                    dt, _ = timed([py, script, inp, out / "kept", out / "work"])
                    kept[name] = count_lines(out / "kept")
                else:
                    continue
                runs[name].append(dt)
                shutil.rmtree(out, ignore_errors=True)
        print(f"\n{bench}: median of {a.repeats} (wall seconds, whole command)")
        print(f"{'':22} {'seconds':>8} {'docs/s':>10} {'MB/s':>8} {'kept':>7}")
        med = {}
        for name, ts in runs.items():
            if not ts:
                continue
            m = statistics.median(ts)
            med[name] = m
            print(f"{name:22} {m:8.2f} {docs / m:10.0f} {size / 1e6 / m:8.2f} {kept.get(name, 0):7}")
        if "datatrove 1 task" in med:
            r1 = med["datatrove 1 task"] / med["ferrolm 1 thread"]
            rn = med["datatrove 1 task"] / med[f"ferrolm {ncpu} threads"]
            print(f"ratio (datatrove time / ferrolm time): {r1:.1f}x per core, {rn:.1f}x with {ncpu} threads")
        results[bench] = {"documents": docs, "mb": size / 1e6, "median_seconds": med, "kept": kept, "repeats": a.repeats}
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
