#!/usr/bin/env python3
"""ferrolm n-gram vs KenLM.

1. Train a model with `ferrolm ngram train`, load its ARPA in the PyPI `kenlm` module and
   check every held-out sentence's log10 probability equals ferrolm's own scorer (1e-4).
2. If KenLM's `lmplz` is found ($LMPLZ or PATH), build KenLM's own model on the same
   text and compare perplexity (target: within 1%), build time and peak memory.
3. Streaming build under a small memory budget (--memory) gives the same ARPA bytes.
4. Load time and query speed: ferrolm ARPA vs ferrolm binary (`ngram query`, times it
   reports on stderr) vs the kenlm Python module on the same ARPA (and on a KenLM binary
   if $BUILD_BINARY points at KenLM's build_binary); medians of $NGRAM_REPEATS runs.
Peers come from /work/venv-ngram (run this script with that interpreter); skips if absent.
"""
import json, os, resource, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERROLM = os.environ.get("FERROLM", "/work/target/release/ferrolm")
DATA = os.environ.get("NGRAM_TEXT", "/work/shared/data/tinyshakespeare/input.txt")
ORDER = int(os.environ.get("NGRAM_ORDER", "5"))
REPEATS = int(os.environ.get("NGRAM_REPEATS", "3"))


def timed(cmd, **kw):
    t = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {p.stderr[-2000:]}")
    peak_kb = int(p.stderr.strip().splitlines()[-1])
    return time.time() - t, peak_kb / 1024, p


def main():
    try:
        import kenlm
    except ImportError:
        print("SKIP: python module `kenlm` not installed (pip install kenlm in /work/venv-ngram)")
        return
    if not os.path.exists(DATA):
        print(f"SKIP: {DATA} missing")
        return
    lines = [l for l in open(DATA, encoding="utf-8").read().splitlines()]
    cut = int(len(lines) * 0.9)
    tmp = tempfile.mkdtemp()
    train, test = os.path.join(tmp, "train.txt"), os.path.join(tmp, "test.txt")
    open(train, "w").write("\n".join(lines[:cut]) + "\n")
    open(test, "w").write("\n".join(lines[cut:]) + "\n")
    arpa = os.path.join(tmp, "ferrolm.arpa")
    t, mem, _ = timed([FERROLM, "ngram", "train", "--order", str(ORDER), "--input", train, "--arpa", arpa])
    print(f"ferrolm build: {t:.2f}s, peak {mem:.0f} MiB")
    q = subprocess.run([FERROLM, "ngram", "query", "--sentence", "--model", arpa, "--input", test], capture_output=True, text=True, check=True)
    ours = [float(l.split("\t")[0]) for l in q.stdout.splitlines()]
    km = kenlm.Model(arpa)
    test_lines = open(test, encoding="utf-8").read().splitlines()
    worst = max(abs(km.score(s, bos=True, eos=True) - o) for s, o in zip(test_lines, ours))
    print(f"per-sentence |kenlm - ferrolm| log10 max = {worst:.2e} over {len(ours)} sentences ({'OK' if worst < 1e-4 else 'FAIL'})")
    sc = json.loads(subprocess.run([FERROLM, "ngram", "score", "--model", arpa, "--input", test, "--json"], capture_output=True, text=True, check=True).stdout)
    print(f"ferrolm perplexity: {sc['perplexity']:.3f}")
    small = os.path.join(tmp, "small.arpa")
    t, mem, _ = timed([FERROLM, "ngram", "train", "--order", str(ORDER), "--input", train, "--arpa", small, "--memory", "8M"])
    same = open(small, "rb").read() == open(arpa, "rb").read()
    print(f"ferrolm build with --memory 8M: {t:.2f}s, peak {mem:.0f} MiB, ARPA identical to default build: {same}")
    query_bench(arpa, test_lines, tmp)
    lmplz = os.environ.get("LMPLZ") or shutil.which("lmplz")
    if not lmplz:
        print("SKIP lmplz comparison: set LMPLZ=/path/to/lmplz (KenLM built from source)")
        return
    karpa = os.path.join(tmp, "kenlm.arpa")
    t, mem, _ = timed([lmplz, "-o", str(ORDER), "--discount_fallback", "--text", train, "--arpa", karpa])
    print(f"lmplz build: {t:.2f}s, peak {mem:.0f} MiB")
    kk = kenlm.Model(karpa)
    tot, n = 0.0, 0
    for s in test_lines:
        tot += kk.score(s, bos=True, eos=True)
        n += len(s.split()) + 1
    kppl = 10 ** (-tot / n)
    print(f"kenlm perplexity: {kppl:.3f}; ratio ferrolm/kenlm = {sc['perplexity'] / kppl:.4f}")


def query_bench(arpa, test_lines, tmp):
    import kenlm, statistics
    binary = os.path.join(tmp, "ferrolm.bin")
    subprocess.run([FERROLM, "ngram", "build-binary", "--arpa", arpa, "--out", binary], check=True, capture_output=True)
    qtext = os.path.join(tmp, "query.txt")
    lines = test_lines * 20  # enough tokens to time
    open(qtext, "w").write("\n".join(lines) + "\n")
    ntok = sum(len(l.split()) + 1 for l in lines)
    q = subprocess.run([FERROLM, "ngram", "query", "--sentence", "--model", binary, "--input", qtext], capture_output=True, text=True, check=True)
    ours = [float(l.split("\t")[0]) for l in q.stdout.splitlines()]
    km = kenlm.Model(arpa)
    worst = max(abs(km.score(s, bos=True, eos=True) - o) for s, o in zip(lines[:5000], ours))
    print(f"binary model: per-sentence |kenlm(ARPA) - ferrolm(binary)| max = {worst:.2e}")
    kbin = None
    bb = os.environ.get("BUILD_BINARY")
    if bb:
        kbin = os.path.join(tmp, "kenlm.probing")
        subprocess.run([bb, "probing", arpa, kbin], check=True, capture_output=True)
    res = {}
    for r in range(REPEATS):
        for name, path in [("ferrolm ARPA", arpa), ("ferrolm binary", binary)]:
            p = subprocess.run([FERROLM, "ngram", "query", "--sentence", "--model", path, "--input", qtext], capture_output=True, text=True, check=True)
            err = dict(l.split(":\t", 1) for l in p.stderr.splitlines() if ":\t" in l)
            load = float(err["Load time"].split()[0])
            qt = float(err["Query time"].split()[0])
            res.setdefault(name, []).append((load, ntok / qt))
        for name, path in [("kenlm python ARPA", arpa)] + ([("kenlm python probing", kbin)] if kbin else []):
            t = time.perf_counter()
            m = kenlm.Model(path)
            load = time.perf_counter() - t
            t = time.perf_counter()
            for s in lines:
                m.score(s, bos=True, eos=True)
            res.setdefault(name, []).append((load, ntok / (time.perf_counter() - t)))
    print(f"query {len(lines)} lines / {ntok} tokens, load avg {os.getloadavg()[0]:.2f}, medians of {REPEATS}:")
    for name, v in res.items():
        print(f"  {name:22s} load {statistics.median(x[0] for x in v) * 1000:9.1f} ms   query {statistics.median(x[1] for x in v):12,.0f} tokens/s")
    print(f"  sizes: ARPA {os.path.getsize(arpa) / 2**20:.1f} MiB, ferrolm binary {os.path.getsize(binary) / 2**20:.1f} MiB"
          + (f", KenLM probing {os.path.getsize(kbin) / 2**20:.1f} MiB" if kbin else ""))


if __name__ == "__main__":
    main()
