#!/usr/bin/env python3
"""Tokenization speed and exactness: ferrolm vs tiktoken vs Hugging Face tokenizers (Python).

All three encode the same 20,000 real documents with GPT-2's vocabulary
(../shared/data/gpt2-tokenizer, override with --gpt2-dir) on the same number of threads
(default 2). Rounds alternate the three encoders; each reports its median MB/s over the
rounds, and the ids of every document are compared (they must be identical).

Documents: Rust and Markdown files from the local Cargo registry (sorted by path, at most
64 KB each), then the records of ../shared/data (dialogues, instructions, Shakespeare
paragraphs, reviews), until --docs documents.

Peers come from a virtual environment outside the repository (default /work/venv-tokenizer,
or $FERROLM_TOKENIZER_VENV): `python -m venv /work/venv-tokenizer &&
/work/venv-tokenizer/bin/pip install tiktoken tokenizers`. A peer that cannot be imported is
skipped with a message. tiktoken's own `gpt2` encoding downloads its file from a non-registry
host, so the Encoding is built here from encoder.json/vocab.bpe with GPT-2's pattern.

ferrolm: the `ferrolm` binary ($FERROLM_BIN, else $CARGO_TARGET_DIR/release/ferrolm, else
target/release/ferrolm); build it first with `cargo build --release -p ferrolm`.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV = os.environ.get("FERROLM_TOKENIZER_VENV", "/work/venv-tokenizer")


def reexec_in_venv():
    """Run under the peer venv's interpreter when the peers are not importable here."""
    try:
        import tiktoken  # noqa: F401
        import tokenizers  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.exists(py) and os.path.realpath(sys.prefix) != os.path.realpath(VENV) \
            and not os.environ.get("FERROLM_BENCH_REEXEC"):
        os.environ["FERROLM_BENCH_REEXEC"] = "1"
        os.execv(py, [py] + sys.argv)


def gather_docs(data_dir, limit):
    """Rust and Markdown files of the local Cargo registry (code and prose), then the records of
    the shared data sets (dialogues, instructions, reviews, Shakespeare), up to `limit`."""
    docs = []
    cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    files = sorted(glob.glob(os.path.join(cargo_home, "registry/src/*/*/**/*.rs"), recursive=True)
                   + glob.glob(os.path.join(cargo_home, "registry/src/*/*/**/*.md"), recursive=True))
    for path in files:
        try:
            if os.path.getsize(path) > 64 * 1024:
                continue
            with open(path, encoding="utf-8") as f:
                docs.append(f.read())
        except (UnicodeDecodeError, OSError):
            continue

    def jsonl(path, fields):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    for fl in fields:
                        if rec.get(fl):
                            docs.append(rec[fl])

    jsonl(os.path.join(data_dir, "preferences/hh-harmless.jsonl"), ["chosen", "rejected"])
    jsonl(os.path.join(data_dir, "preferences/instruction-preferences.jsonl"), ["instruction", "chosen", "rejected"])
    jsonl(os.path.join(data_dir, "instructions/instruction-data.jsonl"), ["instruction", "input", "output"])
    with open(os.path.join(data_dir, "tinyshakespeare/input.txt"), encoding="utf-8") as f:
        docs.extend(p + "\n" for p in f.read().split("\n\n") if p.strip())
    jsonl(os.path.join(data_dir, "sentiment/train.jsonl"), ["text"])
    return docs[:limit]


def bytes_to_unicode():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiktoken_gpt2(gpt2_dir):
    import tiktoken
    with open(os.path.join(gpt2_dir, "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    inv = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(inv[c] for c in tok): i for tok, i in encoder.items() if tok != "<|endoftext|>"}
    return tiktoken.Encoding(
        name="gpt2-local",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": encoder["<|endoftext|>"]},
    )


def ferrolm_bin():
    if os.environ.get("FERROLM_BIN"):
        return os.environ["FERROLM_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "ferrolm")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    candidates = [os.path.join(REPO, "..", "shared", "data"), os.path.join(REPO, "..", "..", "shared", "data")]
    default_data = next((c for c in candidates if os.path.isdir(c)), candidates[0])
    ap.add_argument("--data-dir", default=default_data)
    ap.add_argument("--gpt2-dir", default=None)
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    gpt2_dir = args.gpt2_dir or os.path.join(args.data_dir, "gpt2-tokenizer")
    if not os.path.exists(os.path.join(gpt2_dir, "vocab.bpe")):
        sys.exit(f"skip: GPT-2 files not found in {gpt2_dir}")
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # HF tokenizers (Python) and ferrolm
    os.environ["TOKENIZERS_PARALLELISM"] = "true"

    docs = gather_docs(args.data_dir, args.docs)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"{len(docs)} documents, {mb:.2f} MB, {args.threads} threads, {args.rounds} rounds (medians)")

    work = tempfile.mkdtemp(prefix="ferrolm-tokbench-")
    docs_path = os.path.join(work, "docs.jsonl")
    with open(docs_path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    fbin = ferrolm_bin()
    have_ferrolm = os.path.exists(fbin)
    tok_json = os.path.join(work, "gpt2-tokenizer.json")
    if have_ferrolm:
        subprocess.run([fbin, "tokenizer", "import-gpt2", "--encoder", os.path.join(gpt2_dir, "encoder.json"),
                        "--merges", os.path.join(gpt2_dir, "vocab.bpe"), "--out", tok_json], check=True)
    else:
        print(f"skip ferrolm: {fbin} not found (cargo build --release -p ferrolm)")

    peers = {}
    try:
        enc = tiktoken_gpt2(gpt2_dir)
        peers["tiktoken"] = lambda: enc.encode_batch(docs, num_threads=args.threads, allowed_special="all")
    except ImportError:
        print(f"skip tiktoken: not importable (install it in {VENV})")
    try:
        from tokenizers import Tokenizer as HfTokenizer
        if have_ferrolm:
            hf = HfTokenizer.from_file(tok_json)
            peers["hf-tokenizers"] = lambda: [e.ids for e in hf.encode_batch_fast(docs, add_special_tokens=False)] \
                if hasattr(hf, "encode_batch_fast") else [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)]
    except ImportError:
        print(f"skip HF tokenizers: not importable (install it in {VENV})")

    times = {name: [] for name in peers}
    times["ferrolm"] = []
    times["ferrolm-shards"] = []
    ids = {}
    for name, fn in peers.items():  # untimed warm-up: thread pools, lazy tables
        ids[name] = fn()
    ids_path = os.path.join(work, "ferrolm-ids.jsonl")
    for r in range(args.rounds):
        for name, fn in peers.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if have_ferrolm:
            cmd = [fbin, "tokenizer", "bench", "--tokenizer", tok_json, "--input", docs_path, "--repeats", "1", "--json"]
            if r == 0:
                cmd += ["--dump-ids", ids_path]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            times["ferrolm"].append(res["encode_s"][0])
            times["ferrolm-shards"].append(res["shards_s"][0])

    rates = {}
    for name, ts in times.items():
        if ts:
            rates[name] = mb / statistics.median(ts)
            print(f"{name:>15}: {rates[name]:7.2f} MB/s  (runs: {', '.join(f'{t:.2f}s' for t in ts)})")
    if have_ferrolm:
        with open(ids_path, encoding="utf-8") as f:
            ours = [json.loads(line) for line in f]
        for name, theirs in ids.items():
            bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if list(a) != list(b)]
            bad += list(range(min(len(ours), len(theirs)), max(len(ours), len(theirs))))
            verdict = "IDENTICAL" if not bad else f"{len(bad)} documents DIFFER (first: #{bad[0]})"
            print(f"ids vs {name}: {verdict} on {len(ours)} documents")
        for name in peers:
            print(f"ratio ferrolm/{name}: encode {rates['ferrolm'] / rates[name]:.2f}x, "
                  f"into shards {rates['ferrolm-shards'] / rates[name]:.2f}x")


if __name__ == "__main__":
    reexec_in_venv()
    main()
