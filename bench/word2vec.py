#!/usr/bin/env python3
"""ferrolm word2vec vs gensim: same corpus, same hyper-parameters, same thread count.

Corpus: text assembled locally (tinyshakespeare + Markdown/doc text from ~/.cargo/registry/src),
lower-cased, non-letters removed (text8-like), or $W2V_CORPUS. Reports words/s and analogy
accuracy on questions-words.txt (top 30000 words) for both, medians over $W2V_REPEATS runs.
Run with /work/venv-ngram/bin/python (gensim installed there); skips if gensim is absent.
"""
import glob, json, os, re, statistics, subprocess, sys, tempfile, time

FERROLM = os.environ.get("FERROLM", "/work/target/release/ferrolm")
QUESTIONS = "/work/shared/data/word2vec/questions-words.txt"
REPEATS = int(os.environ.get("W2V_REPEATS", "3"))
P = dict(dim=int(os.environ.get("W2V_DIM", "100")), window=5, negative=5, min_count=5,
         epochs=int(os.environ.get("W2V_EPOCHS", "5")), threads=2, sample=1e-3)


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


def main():
    try:
        from gensim.models import Word2Vec, KeyedVectors
        from gensim.models.word2vec import LineSentence
    except ImportError:
        print("SKIP: gensim not installed in this interpreter (pip install gensim in /work/venv-ngram)")
        return
    tmp = tempfile.mkdtemp()
    corpus = os.environ.get("W2V_CORPUS") or os.path.join(tmp, "corpus.txt")
    if not os.environ.get("W2V_CORPUS"):
        print(f"corpus bytes: {build_corpus(corpus)}")
    ntok = sum(len(l.split()) for l in open(corpus))
    print(f"corpus tokens: {ntok}, params {P}, load average before: {os.getloadavg()}")
    modes = os.environ.get("W2V_MODES", "skipgram,cbow").split(",")
    for cbow in [m == "cbow" for m in modes]:
        name = "cbow" if cbow else "skipgram"
        alpha = 0.05 if cbow else 0.025
        res = {"ferrolm": [], "gensim": []}
        for r in range(REPEATS):
            out = os.path.join(tmp, f"f{r}.bin")
            cmd = [FERROLM, "word2vec", "train", "--input", corpus, "--out", out, "--binary", "--dim", str(P["dim"]),
                   "--window", "5", "--negative", "5", "--min-count", "5", "--epochs", str(P["epochs"]),
                   "--threads", "2", "--alpha", str(alpha), "--seed", str(r + 1)] + (["--cbow"] if cbow else [])
            t = time.time()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                sys.exit(p.stderr)
            wall = time.time() - t
            # words/s counted as gensim counts them: raw corpus words × epochs / training seconds
            wps = ntok * P["epochs"] / json.loads(p.stdout.strip().splitlines()[-1])["seconds"]
            kv = KeyedVectors.load_word2vec_format(out, binary=True)
            acc = kv.evaluate_word_analogies(QUESTIONS, restrict_vocab=30000)[0]
            res["ferrolm"].append((wps, acc, wall))
            t = time.time()
            m = Word2Vec(LineSentence(corpus), vector_size=P["dim"], window=5, negative=5, min_count=5, sg=0 if cbow else 1,
                         epochs=P["epochs"], workers=2, sample=1e-3, alpha=alpha, seed=r + 1, hs=0)
            wall = time.time() - t
            # gensim's own words/s: effective words trained / training time
            twps = m.corpus_total_words * P["epochs"] / m.total_train_time
            acc = m.wv.evaluate_word_analogies(QUESTIONS, restrict_vocab=30000)[0]
            res["gensim"].append((twps, acc, wall))
        for k, v in res.items():
            print(f"{name:8s} {k:8s} load avg now {os.getloadavg()[0]:.2f}  words/s median {statistics.median(x[0] for x in v):,.0f}  "
                  f"analogy median {statistics.median(x[1] for x in v):.4f}  wall median {statistics.median(x[2] for x in v):.1f}s  runs={v}")


if __name__ == "__main__":
    main()
