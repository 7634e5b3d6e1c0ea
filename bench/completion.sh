#!/usr/bin/env bash
# Code completion with and without fill-in-the-middle (issue 16): the figures of
# bench/README.md's "Code completion" section.
#   bench/completion.sh          the medium run reported there (~45 min on 2 shared cores)
#   bench/completion.sh quick    the --quick run (~2 min)
#   bench/completion.sh long     6000 steps (1.5 epochs of a 42.6 MB sample), 4 held-out lines
#                                per file (642 lines), paired bootstrap intervals (~70 min on
#                                2 cores of an Intel Xeon)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ferrolm
bin=target/release/ferrolm
if [ "${1:-}" = quick ]; then
  "$bin" experiment completion --quick --out runs/experiment-completion-quick
elif [ "${1:-}" = long ]; then
  "$bin" experiment completion --out runs/experiment-completion-long \
    --set train.max_steps=6000 --set train.eval_interval=500 --set experiment.max_corpus_bytes=45000000 \
    --set experiment.lines_per_file=4 --set experiment.examples=1000
else
  "$bin" experiment completion --out runs/experiment-completion-medium \
    --set train.max_steps=600 --set train.eval_interval=150
fi
