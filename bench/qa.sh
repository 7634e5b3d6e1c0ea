#!/usr/bin/env bash
# Question answering figures of issue 16 (bench/README.md, "Question answering"):
#  1. a small BERT-style masked LM pretrained on English prose for a bounded time (the
#     registry's Markdown and doc comments, HH dialogues, instruction records);
#  2. the extractive span reader fine-tuned on the SQuAD 2.0 article "Normans" (its
#     threshold tuned on a quarter of its paragraphs) and measured on the other article,
#     "Computational_complexity_theory", each question read from its own paragraph, against
#     the trivial readers (first sentence; most common answer type) and always-no-answer;
#  3. retrieval with distractors: both articles' paragraphs + ~3 MB of registry Markdown,
#     recall@k for BM25, dense (the masked LM, mean-pooled) and hybrid (weighted RRF);
#  4. the reader behind hybrid retrieval (top 3 passages) on the held-out article.
#
#   bash bench/qa.sh                 # everything into $WORK (default /tmp/ferrolm-qa-bench)
#   MLM_SECS=600 bash bench/qa.sh    # a shorter pretraining
#
# Needs python3 (to split the SQuAD file and sample the registry docs), a built ferrolm
# (FERROLM_BIN, default target/release/ferrolm) and ../shared/data.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
bin="${FERROLM_BIN:-$repo/target/release/ferrolm}"
shared="${SHARED:-$repo/../shared/data}"
[[ -d "$shared" ]] || shared="$repo/../../shared/data"
work="${WORK:-/tmp/ferrolm-qa-bench}"
mlm_secs="${MLM_SECS:-1800}"
mkdir -p "$work"
cd "$work"

# -- data: the two articles apart; English prose for pretraining; registry docs as distractors
[[ -f cargo.jsonl ]] || "$bin" data cargo --lockfile "$repo/Cargo.lock" --out cargo.jsonl
python3 - "$shared" <<'PY'
import json, sys
shared = sys.argv[1]
d = json.load(open(f"{shared}/qa/squad2-dev-subset.json"))
for a in d["data"]:
    name = {"Normans": "normans", "Computational_complexity_theory": "complexity"}[a["title"]]
    json.dump({"version": d.get("version", "v2.0"), "data": [a]}, open(f"{name}.json", "w"))
with open("prose.jsonl", "w") as out, open("distractors.jsonl", "w") as dis:
    size = 0
    for line in open("cargo.jsonl"):
        r = json.loads(line)
        if r.get("source") != "prose":
            continue
        out.write(json.dumps({"text": r["text"]}) + "\n")
        if r["id"].endswith(".md") and size <= 3_000_000:
            dis.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
            size += len(r["text"])
    for line in open(f"{shared}/preferences/hh-harmless.jsonl"):
        out.write(json.dumps({"text": json.loads(line)["chosen"]}) + "\n")
    for line in open(f"{shared}/instructions/instruction-data.jsonl"):
        r = json.loads(line)
        out.write(json.dumps({"text": "\n".join([r["instruction"], r.get("input", ""), r["output"]])}) + "\n")
PY

# -- 1. the masked LM
if [[ ! -d mlm-prose/checkpoints ]]; then
  "$bin" tokenizer train --input prose.jsonl --out prose-tok/tokenizer.json --vocab-size 8192
  "$bin" tokenizer shards --tokenizer prose-tok/tokenizer.json --input prose.jsonl --out prose-data --val-fraction 0.01
  cat > mlm.toml <<TOML
[data]
train = "$work/prose-data/train"
val = "$work/prose-data/val"
tokenizer = "$work/prose-tok/tokenizer.json"
[model]
kind = "masked_lm"
block = "modern"
vocab_size = 8192
d_model = 256
n_layers = 4
n_heads = 4
n_kv_heads = 4
max_seq_len = 128
tie_embeddings = true
[train]
max_steps = 400
time_limit_secs = $mlm_secs
batch_size = 16
seq_len = 128
lr = 1e-3
min_lr = 1e-4
warmup_steps = 50
weight_decay = 0.01
eval_interval = 100
eval_batches = 4
checkpoint_interval = 50
keep_checkpoints = 1
TOML
  "$bin" train --config mlm.toml --out mlm-prose
fi

# -- 2. the reader, and the trivial readers
"$bin" qa train --model mlm-prose --out reader-normans --data normans.json --set qa.val_fraction=0.25 \
  --set train.max_steps=200 --set train.time_limit_secs=1200 --json > reader-normans.json
"$bin" qa eval --model reader-normans --data complexity.json | tee reader-complexity.txt
"$bin" qa baseline --train normans.json --data complexity.json | tee baselines-complexity.txt

# -- 3. retrieval with distractors
rm -rf ix
"$bin" rag index --docs "$shared/qa/squad2-dev-subset.json" distractors.jsonl --out ix --embed mlm-prose
for mode in bm25 dense hybrid; do
  "$bin" rag eval --index ix --qa "$shared/qa/squad2-dev-subset.json" --mode "$mode" | tee "retrieval-$mode.txt"
done
"$bin" rag eval --index ix --qa "$shared/qa/squad2-dev-subset.json" --mode hybrid --dense-weight 0.3 | tee retrieval-hybrid-0.3.txt

# -- 4. the reader behind retrieval, on the held-out article
"$bin" rag eval --index ix --qa complexity.json --mode bm25 --model reader-normans --read-k 3 | tee reading-bm25.txt
