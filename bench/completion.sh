#!/usr/bin/env bash
# Code completion with and without fill-in-the-middle (issue 16): the figures of
# bench/README.md's "Code completion" section.
#   bench/completion.sh          the medium run reported there (~45 min on 2 shared cores)
#   bench/completion.sh quick    the --quick run (~2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ferrolm
bin=target/release/ferrolm
if [ "${1:-}" = quick ]; then
  "$bin" experiment completion --quick --out runs/experiment-completion-quick
else
  "$bin" experiment completion --out runs/experiment-completion-medium \
    --set train.max_steps=600 --set train.eval_interval=150
fi
