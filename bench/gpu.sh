#!/usr/bin/env bash
# GPU checks of issue 17, as one prepared call on a lent GPU machine (no cargo there, so the
# binaries travel). Two steps:
#
#   bench/gpu.sh build        # HERE: build target-gpu/{ferrolm,cuda_parity} with --features cuda
#                             # (needs nvcc: README "GPUs (CUDA)"; CUDA_COMPUTE_CAP=90 for H100/H200)
#   bench/gpu.sh run          # THERE (device tool, carry ["target-gpu"]): results under $OUT
#
# `run` does, each step logged to $OUT/gpu.log and as JSON lines in $OUT/gpu.jsonl:
#   1. nvidia-smi;
#   2. the CUDA parity tests (every kernel and whole models, forward and gradients, CPU vs GPU);
#   3. training tokens/s on the c2 preset: `ferrolm --device cuda bench train` and
#      bench/train_torch.py --device cuda (eager, torch.compile, and bf16 autocast), same run;
#   4. the same ferrolm preset on the CPU, for the GPU/CPU ratio.
# The script has not run on a GPU yet (no machine was lent to the session that wrote it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"

case "${1:-run}" in
build)
  : "${CUDA_COMPUTE_CAP:=90}"
  export CUDA_COMPUTE_CAP
  cargo build --release -p ferrolm --features cuda || exit 1
  bin=$(cargo test --release -p ferrolm-model --features cuda --test cuda_parity --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("executable") and "cuda_parity" in j["executable"]][-1])') || exit 1
  mkdir -p target-gpu
  cp "${CARGO_TARGET_DIR:-target}/release/ferrolm" "$bin" target-gpu/ || exit 1
  mv target-gpu/"$(basename "$bin")" target-gpu/cuda_parity
  ls -la target-gpu
  ;;
run)
  log() { echo "== $*" | tee -a "$OUT/gpu.log"; }
  log "nvidia-smi"; nvidia-smi 2>&1 | tee -a "$OUT/gpu.log"
  log "parity tests"
  ./target-gpu/cuda_parity --nocapture --test-threads 1 2>&1 | tee -a "$OUT/gpu.log"
  log "ferrolm c2 on cuda"
  ./target-gpu/ferrolm --device cuda bench train --preset c2 --steps 50 --json 2>>"$OUT/gpu.log" | tee -a "$OUT/gpu.jsonl"
  for mode in "" "--compile" "--autocast-bf16" "--compile --autocast-bf16"; do
    log "pytorch c2 on cuda $mode"
    # shellcheck disable=SC2086
    python3 bench/train_torch.py --preset c2 --steps 50 --device cuda --json $mode 2>>"$OUT/gpu.log" | tee -a "$OUT/gpu.jsonl"
  done
  log "ferrolm c2 on cpu"
  ./target-gpu/ferrolm bench train --preset c2 --steps 5 --json 2>>"$OUT/gpu.log" | tee -a "$OUT/gpu.jsonl"
  ;;
*)
  echo "usage: bench/gpu.sh build|run" >&2
  exit 2
  ;;
esac
