"""ferrolm's bag-of-words logistic-regression baseline vs scikit-learn on the same features.

Both: binary word uni+bigram features (lower-cased alphanumeric words, inner apostrophes
kept), min_df = 2, L2-penalised logistic regression fitted by L-BFGS, trained on
sentiment/train.jsonl and scored on sentiment/test.jsonl. ferrolm fits a 2-class softmax
with C; its optimum equals the binary logistic model with C' = 2C (w = w1 - w0, and the
penalty splits evenly between the two vectors), so scikit-learn runs with C = 2 for C = 1.

Usage: python bench/bow_baseline.py [--ferrolm target/release/ferrolm] [--repeats 3]
Needs a venv OUTSIDE the repo with scikit-learn (e.g. /work/venv-sft); skips otherwise.
"""
import argparse, json, os, statistics, subprocess, sys, time

def words(text):
    out, cur = [], ""
    for ch in text:
        if ch.isalnum() or (ch == "'" and cur):
            cur += ch.lower()
        elif cur:
            out.append(cur.rstrip("'")); cur = ""
    if cur:
        out.append(cur.rstrip("'"))
    return out

def load(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return [r["text"] for r in rows], [r["label"] for r in rows]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ferrolm", default="target/release/ferrolm")
    ap.add_argument("--data", default="../shared/data/sentiment")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    try:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score
    except ImportError:
        print("scikit-learn not installed in this Python: skipping (use a venv outside the repo)"); return
    tr, te = os.path.join(a.data, "train.jsonl"), os.path.join(a.data, "test.jsonl")
    xtr, ytr = load(tr); xte, yte = load(te)
    sk_times, sk = [], None
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        vec = CountVectorizer(tokenizer=words, lowercase=False, token_pattern=None, ngram_range=(1, 2), min_df=2, binary=True)
        X = vec.fit_transform(xtr)
        m = LogisticRegression(C=2.0, max_iter=1000, tol=1e-6).fit(X, ytr)
        p = m.predict(vec.transform(xte))
        sk_times.append(time.perf_counter() - t0)
        sk = dict(features=len(vec.vocabulary_), accuracy=accuracy_score(yte, p), macro_f1=f1_score(yte, p, average="macro"))
    fe_times, fe = [], None
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        out = subprocess.run([a.ferrolm, "classify", "baseline", "--data", tr, "--val-data", te, "--json"], check=True, capture_output=True, text=True).stdout
        fe_times.append(time.perf_counter() - t0)
        fe = json.loads(out)
    print(f"scikit-learn: {sk['features']} features, accuracy {sk['accuracy']:.4f}, macro-F1 {sk['macro_f1']:.4f}, median {statistics.median(sk_times):.2f}s (fit+predict incl. featurising)")
    print(f"ferrolm:      {fe['features']} features, accuracy {fe['accuracy']:.4f}, macro-F1 {fe['macro_f1']:.4f}, median {statistics.median(fe_times):.2f}s (whole command incl. reading JSONL)")
    print(f"time ratio scikit-learn / ferrolm: {statistics.median(sk_times) / statistics.median(fe_times):.2f}")

if __name__ == "__main__":
    main()
