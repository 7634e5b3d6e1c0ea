#!/usr/bin/env python3
"""ferrolm word2vec vs gensim: same corpus, same hyper-parameters, same thread count.

Corpus: text assembled locally (tinyshakespeare + Markdown/doc text from ~/.cargo/registry/src),
lower-cased, non-letters removed (text8-like), or $W2V_CORPUS. Reports words/s and analogy
accuracy on questions-words.txt (top 30000 words) for both, medians over $W2V_REPEATS runs.
Run with /work/venv-ngram/bin/python (gensim installed there); skips if gensim is absent.
Env: FERROLM (binary), W2V_MODES (skipgram,cbow), W2V_THREADS (1,2), W2V_REPEATS, W2V_EPOCHS, W2V_DIM.
Runs alternate ferrolm and gensim (the first tool alternates too); the load average before each
run is printed and the table gives its range, since this machine is shared.
"""
import glob, json, os, re, statistics, subprocess, sys, tempfile, time

FERROLM = os.environ.get("FERROLM", "/work/target/release/ferrolm")
QUESTIONS = "/work/shared/data/word2vec/questions-words.txt"
REPEATS = int(os.environ.get("W2V_REPEATS", "3"))
P = dict(dim=int(os.environ.get("W2V_DIM", "100")), window=5, negative=5, min_count=5,
         epochs=int(os.environ.get("W2V_EPOCHS", "5")), sample=1e-3, min_alpha=1e-4)


def build_corpus(path, max_bytes=int(os.environ.get("W2V_MAX_BYTES", str(60 << 20)))):
    files = ["/work/shared/data/tinyshakespeare/input.txt"]
    files += sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/*/*.md")))
    files += sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/*/src/**/*.rs"), recursive=True))
    n = 0
    with open(path, "w") as out:
        for f in files:
            try:
                t = open(f, encoding="utf-8", errors="ignore").read().lower()
            except OSError:
                continue
            if f.endswith(".rs"):  # keep comment prose only
                t = "\n".join(l.split("//", 1)[1] for l in t.splitlines() if "//" in l)
            for line in t.splitlines():
                words = re.sub(r"[^a-z]+", " ", line).split()
                if len(words) >= 3:
                    s = " ".join(words) + "\n"
                    out.write(s)
                    n += len(s)
            if n > max_bytes:
                break
    return n


def run_ferrolm(corpus, out, cbow, threads, alpha, seed):
    cmd = [FERROLM, "word2vec", "train", "--input", corpus, "--out", out, "--binary", "--dim", str(P["dim"]),
           "--window", "5", "--negative", "5", "--min-count", "5", "--epochs", str(P["epochs"]),
           "--threads", str(threads), "--alpha", str(alpha), "--min-alpha", "1e-4", "--seed", str(seed)] + (["--cbow"] if cbow else [])
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr)
    wall = time.time() - t
    return json.loads(p.stdout.strip().splitlines()[-1])["seconds"], wall


def main():
    try:
        from gensim.models import Word2Vec, KeyedVectors
        from gensim.models.word2vec import LineSentence
    except ImportError:
        print("SKIP: gensim not installed in this interpreter (pip install gensim in /work/venv-ngram)")
        return
    if not os.path.exists(FERROLM):
        print(f"SKIP: no ferrolm binary at {FERROLM} (set FERROLM=path/to/release/ferrolm)")
        return
    tmp = tempfile.mkdtemp()
    corpus = os.environ.get("W2V_CORPUS") or os.path.join(tmp, "corpus.txt")
    if not os.environ.get("W2V_CORPUS"):
        print(f"corpus bytes: {build_corpus(corpus)}")
    ntok = sum(len(l.split()) for l in open(corpus))
    print(f"ferrolm: {FERROLM}\ncorpus tokens: {ntok}, params {P}, load average before: {os.getloadavg()}")
    modes = os.environ.get("W2V_MODES", "skipgram,cbow").split(",")
    threads_list = [int(t) for t in os.environ.get("W2V_THREADS", "1,2").split(",")]
    rows = []
    for name in modes:
        cbow = name == "cbow"
        alpha = 0.05 if cbow else 0.025
        for threads in threads_list:
            res = {"ferrolm": [], "gensim": []}
            for r in range(REPEATS):
                # alternate which tool goes first, so a load change mid-pair hits both alike
                order = ["ferrolm", "gensim"] if r % 2 == 0 else ["gensim", "ferrolm"]
                for tool in order:
                    load = os.getloadavg()[0]
                    if tool == "ferrolm":
                        out = os.path.join(tmp, f"f{r}.bin")
                        secs, wall = run_ferrolm(corpus, out, cbow, threads, alpha, r + 1)
                        # words/s counted as gensim counts them: raw corpus words × epochs / training seconds
                        wps = ntok * P["epochs"] / secs
                        kv = KeyedVectors.load_word2vec_format(out, binary=True)
                        acc = kv.evaluate_word_analogies(QUESTIONS, restrict_vocab=30000)[0]
                    else:
                        t = time.time()
                        m = Word2Vec(LineSentence(corpus), vector_size=P["dim"], window=5, negative=5, min_count=5,
                                     sg=0 if cbow else 1, epochs=P["epochs"], workers=threads, sample=1e-3, alpha=alpha, min_alpha=1e-4,
                                     seed=r + 1, hs=0)
                        wall = time.time() - t  # build_vocab + train
                        # raw words (corpus_total_words counts every word read) × epochs / training time
                        wps = m.corpus_total_words * P["epochs"] / m.total_train_time
                        acc = m.wv.evaluate_word_analogies(QUESTIONS, restrict_vocab=30000)[0]
                    res[tool].append(dict(wps=wps, acc=acc, wall=wall, load=load))
                    print(f"  {name} threads={threads} {tool:8s} run {r + 1}: {wps:,.0f} words/s, analogy {acc:.4f}, "
                          f"wall {wall:.1f}s, load {load:.2f}", flush=True)
            med = {k: {f: statistics.median(x[f] for x in v) for f in ("wps", "acc", "wall")} for k, v in res.items()}
            ratios = [f["wps"] / g["wps"] for f, g in zip(res["ferrolm"], res["gensim"])]
            loads = [x["load"] for v in res.values() for x in v]
            rows.append((name, threads, med, ratios, min(loads), max(loads)))
    print("\n| mode | threads | ferrolm words/s | gensim words/s | ratio of medians | per-pair ratios | "
          "ferrolm analogy | gensim analogy | wall ferrolm / gensim | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, threads, med, ratios, lo, hi in rows:
        f, g = med["ferrolm"], med["gensim"]
        print(f"| {name} | {threads} | {f['wps']:,.0f} | {g['wps']:,.0f} | {f['wps'] / g['wps']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in ratios)} | {f['acc']:.4f} | {g['acc']:.4f} | "
              f"{f['wall']:.1f}s / {g['wall']:.1f}s | {lo:.1f}–{hi:.1f} |")


if __name__ == "__main__":
    main()
