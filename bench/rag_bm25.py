#!/usr/bin/env python3
"""BM25 retrieval: ferrolm (tantivy) vs rank_bm25's BM25Okapi on the same passages and questions.

Settings (both by default):
  squad            the SQuAD 2.0 dev subset indexed alone (one document per paragraph)
  squad+registry   the same paragraphs among distractors: the Cargo registry sources named in
                   this project's Cargo.lock (`ferrolm rag index --docs squad.json --registry`)

For each setting, ferrolm builds the index (`--repeats` fresh builds: build MB/s from its
report), exports its passages (`ferrolm rag export-passages`) and evaluates every question
(`ferrolm rag eval --json`: recall@1/5/20, MRR, query latency p50/p99). rank_bm25 then indexes
exactly those exported passages and answers the same questions; a retrieved passage is
relevant when its document is the question's paragraph (`squad:<title>/<index>`), as in
ferrolm. Figures are medians over the repeats; recall does not vary between repeats.

Tokenisation for rank_bm25 copies tantivy's default analyser: split on characters that are not
alphanumeric, drop tokens of 40 bytes or more, lowercase. No stemming, no stop words, on both
sides. Two rank_bm25 scorers are run: BM25Okapi as shipped (k1 and b set to tantivy's 1.2 and
0.75; idf ln((N-n+.5)/(n+.5)) with negative idfs floored at 0.25 x mean idf), and the same
class with Lucene's idf ln(1 + (N-n+.5)/(n+.5)), which is tantivy's formula; the only
remaining difference then is tantivy's quantised document lengths.

Usage:
  cargo build --release -p ferrolm
  python3 -m venv /work/venv-bench && /work/venv-bench/bin/pip install rank_bm25 numpy
  /work/venv-bench/bin/python bench/rag_bm25.py [--repeats 3] [--settings squad squad+registry]

Environment: FERROLM_BIN (default $CARGO_TARGET_DIR/release/ferrolm, then target/release/ferrolm,
then `ferrolm` on PATH).
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SQUAD = os.path.join(REPO, "..", "shared", "data", "qa", "squad2-dev-subset.json")
DEPTH = 20
TOKEN = re.compile(r"[^\W_]+")


def find_ferrolm():
    env = os.environ.get("FERROLM_BIN")
    if env:
        return env
    for base in (os.environ.get("CARGO_TARGET_DIR"), os.path.join(REPO, "target")):
        if base:
            p = os.path.join(base, "release", "ferrolm")
            if os.path.exists(p):
                return p
    return shutil.which("ferrolm")


def tokenize(text):
    # tantivy: SimpleTokenizer (runs of char::is_alphanumeric), RemoveLongFilter(40 bytes),
    # LowerCaser, in that order: lowercase each token, not the text first.
    return [t.lower() for t in TOKEN.findall(text) if len(t.encode("utf-8")) < 40]


def questions_of(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)["data"]
    out = []
    for article in data:
        for p, para in enumerate(article["paragraphs"]):
            for qa in para["qas"]:
                out.append((qa["question"], f"squad:{article['title']}/{p}", bool(qa.get("is_impossible", False))))
    return out


def metrics(ranks):
    n = len(ranks)
    if n == 0:
        return {"scored": 0}
    within = lambda k: sum(1 for r in ranks if r is not None and r <= k) / n
    return {
        "scored": n,
        "recall_at_1": within(1),
        "recall_at_5": within(5),
        "recall_at_20": within(20),
        "mrr": sum(1.0 / r for r in ranks if r is not None) / n,
    }


def percentile(sorted_vals, p):
    # nearest rank, as ferrolm's eval
    rank = max(1, math.ceil(p / 100 * len(sorted_vals)))
    return sorted_vals[min(rank, len(sorted_vals)) - 1]


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return json.loads(r.stdout)


def ferrolm_side(bin_, squad, registry, repeats, work):
    builds = []
    idx = None
    for i in range(repeats):
        idx = os.path.join(work, f"index-{i}")
        shutil.rmtree(idx, ignore_errors=True)
        cmd = [bin_, "rag", "index", "--docs", squad, "--out", idx, "--json"]
        if registry:
            cmd.append("--registry")
        t = time.perf_counter()
        rep = run_json(cmd)
        wall = time.perf_counter() - t
        builds.append({"mb_per_s": rep["mb_per_s"], "seconds": rep["seconds"], "wall": wall, "bytes": rep["bytes_read"],
                       "passages": rep["passages"]})
        if i < repeats - 1:
            shutil.rmtree(idx, ignore_errors=True)
    passages = os.path.join(work, "passages.jsonl")
    subprocess.run([bin_, "rag", "export-passages", "--index", idx, "--out", passages], check=True, capture_output=True)
    evals = [run_json([bin_, "rag", "eval", "--index", idx, "--qa", squad, "--json"]) for _ in range(repeats)]
    return builds, evals, passages


def peer_side(passages_path, questions, repeats, BM25Okapi, lucene_idf):
    with open(passages_path, encoding="utf-8") as f:
        passages = [json.loads(l) for l in f]
    docs = [p["doc"] for p in passages]
    text_bytes = sum(len(p["text"].encode("utf-8")) for p in passages)
    held = set(docs)

    class LuceneIdf(BM25Okapi):
        def _calc_idf(self, nd):
            for word, freq in nd.items():
                self.idf[word] = math.log(1 + (self.corpus_size - freq + 0.5) / (freq + 0.5))

    cls = LuceneIdf if lucene_idf else BM25Okapi
    import numpy as np

    builds, p50s, p99s, ranks_all = [], [], [], None
    for _ in range(repeats):
        t = time.perf_counter()
        corpus = [tokenize(p["text"]) for p in passages]
        bm25 = cls(corpus, k1=1.2, b=0.75)
        builds.append(time.perf_counter() - t)
        lat, ranks = [], []
        for q, para, impossible in questions:
            if para not in held:
                continue
            t = time.perf_counter()
            scores = bm25.get_scores(tokenize(q))
            k = min(DEPTH, len(scores))
            top = np.argpartition(-scores, k - 1)[:k]
            # best first; ties to the lower passage id, as ferrolm breaks them
            top = sorted(top, key=lambda i: (-scores[i], passages[i]["id"]))
            lat.append((time.perf_counter() - t) * 1e3)
            rank = next((r + 1 for r, i in enumerate(top) if docs[i] == para and scores[i] > 0), None)
            ranks.append((rank, impossible))
        lat.sort()
        p50s.append(percentile(lat, 50))
        p99s.append(percentile(lat, 99))
        ranks_all = ranks
    mb_s = [text_bytes / 1e6 / s for s in builds]
    res = {
        "all": metrics([r for r, _ in ranks_all]),
        "answerable": metrics([r for r, imp in ranks_all if not imp]),
        "unanswerable": metrics([r for r, imp in ranks_all if imp]),
        "build_seconds": statistics.median(builds),
        "build_mb_per_s": statistics.median(mb_s),
        "passage_text_bytes": text_bytes,
        "latency_ms_p50": statistics.median(p50s),
        "latency_ms_p99": statistics.median(p99s),
        "passages": len(passages),
    }
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", default=DEFAULT_SQUAD)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=["squad", "squad+registry"], choices=["squad", "squad+registry"])
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--json", default=None, help="also write all figures here")
    args = ap.parse_args()
    try:
        from rank_bm25 import BM25Okapi
        import numpy  # noqa: F401
    except ImportError:
        print("rank_bm25/numpy not installed: skipping the peer (python3 -m venv /work/venv-bench && "
              "/work/venv-bench/bin/pip install rank_bm25 numpy, then run with /work/venv-bench/bin/python)")
        return 0
    bin_ = find_ferrolm()
    if not bin_ or not os.path.exists(bin_) and not shutil.which(bin_):
        print("ferrolm binary not found: build it with `cargo build --release -p ferrolm` or set FERROLM_BIN")
        return 0
    squad = os.path.abspath(args.squad)
    if not os.path.exists(squad):
        print(f"{squad}: not found (the SQuAD 2.0 dev subset lives in ../shared/data/qa)")
        return 0
    questions = questions_of(squad)
    work = args.work or tempfile.mkdtemp(prefix="rag-bench-")
    os.makedirs(work, exist_ok=True)
    out = {}
    try:
        for setting in args.settings:
            wdir = os.path.join(work, setting.replace("+", "_"))
            os.makedirs(wdir, exist_ok=True)
            builds, evals, passages = ferrolm_side(bin_, squad, setting == "squad+registry", args.repeats, wdir)
            ev = evals[0]
            fer = {
                "all": {k: ev[k] for k in ("scored", "recall_at_1", "recall_at_5", "recall_at_20", "mrr")},
                "answerable": ev["answerable"],
                "unanswerable": ev["unanswerable"],
                "build_mb_per_s": statistics.median(b["mb_per_s"] for b in builds),
                "build_seconds": statistics.median(b["seconds"] for b in builds),
                "input_bytes": builds[0]["bytes"],
                "latency_ms_p50": statistics.median(e["latency_ms_p50"] for e in evals),
                "latency_ms_p99": statistics.median(e["latency_ms_p99"] for e in evals),
                "passages": builds[0]["passages"],
            }
            okapi = peer_side(passages, questions, args.repeats, BM25Okapi, lucene_idf=False)
            lucene = peer_side(passages, questions, 1, BM25Okapi, lucene_idf=True)
            # Like for like: ferrolm's build time over the passage text rank_bm25 indexes (ferrolm's
            # own MB/s counts the input files, which for SQuAD JSON include the questions).
            fer["build_mb_per_s_passage_text"] = okapi["passage_text_bytes"] / 1e6 / fer["build_seconds"]
            out[setting] = {"ferrolm": fer, "rank_bm25_okapi": okapi, "rank_bm25_lucene_idf": lucene}
            print(f"\n## {setting}: {fer['passages']} passages, {fer['all']['scored']} questions, {args.repeats} repeats")
            print(f"{'':<28} {'R@1':>7} {'R@5':>7} {'R@20':>7} {'MRR':>7} {'ans R@5':>8} {'unans R@5':>9} {'build MB/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
            for name, r in (("ferrolm (tantivy)", fer), ("rank_bm25 BM25Okapi", okapi), ("rank_bm25 + Lucene idf", lucene)):
                a = r["all"]
                print(f"{name:<28} {a['recall_at_1']:>7.4f} {a['recall_at_5']:>7.4f} {a['recall_at_20']:>7.4f} {a['mrr']:>7.4f} "
                      f"{r['answerable']['recall_at_5']:>8.4f} {r['unanswerable']['recall_at_5']:>9.4f} "
                      f"{r['build_mb_per_s']:>11.2f} {r['latency_ms_p50']:>8.3f} {r['latency_ms_p99']:>8.3f}")
            print(f"ferrolm build: {fer['input_bytes'] / 1e6:.2f} MB of input files in {fer['build_seconds']:.2f} s "
                  f"({fer['build_mb_per_s_passage_text']:.2f} MB/s of passage text); "
                  f"rank_bm25 build: {okapi['passage_text_bytes'] / 1e6:.2f} MB of passage text in {okapi['build_seconds']:.2f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
