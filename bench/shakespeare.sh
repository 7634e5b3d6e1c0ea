#!/usr/bin/env bash
# Learning benchmark of issue 2: nanoGPT's Shakespeare-char CPU recipe (c1 model, batch 12, context 64,
# lr 1e-3 -> 1e-4 cosine, 2000 iterations), ferrolm against the PyTorch reference, side by side.
# Reports each side's final validation loss (nats/char, 200 eval batches) and wall time.
#
#   bash bench/shakespeare.sh              # one run each, 2 threads
#   REPEATS=3 THREADS=2 bash bench/shakespeare.sh
#   MATMUL=bf16 bash bench/shakespeare.sh  # bf16 matrix products on both sides (AMX where the CPU has it)
#
# Environment: BENCH_VENV (default /work/venv-bench) or BENCH_PYTHON for PyTorch; FERROLM_BIN for the binary;
# SHAKESPEARE (default ../shared/data/tinyshakespeare/input.txt); FERROLM_SHAKESPEARE_CONFIG for ferrolm's config.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
threads="${THREADS:-2}"
repeats="${REPEATS:-1}"
matmul="${MATMUL:-f32}"  # bf16: both sides multiply matrices with bf16 operands and f32 sums
iters="${ITERS:-2000}"   # fewer only for a smoke test of this script: the recipe is 2000
data="${SHAKESPEARE:-}"
if [[ -z "$data" ]]; then
  # ../shared/data beside the repository (a checkout in a worktree folder may be one level deeper).
  data="$repo/../shared/data/tinyshakespeare/input.txt"
  [[ -f "$data" ]] || data="$repo/../../shared/data/tinyshakespeare/input.txt"
fi
export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"

if [[ ! -f "$data" ]]; then
  echo "shakespeare.sh: $data not found (set SHAKESPEARE=path/to/input.txt)" >&2
  exit 1
fi

# --- PyTorch peer -------------------------------------------------------------------------------------
py="${BENCH_PYTHON:-${BENCH_VENV:-/work/venv-bench}/bin/python}"
have_torch=0
if [[ -x "$py" ]] && "$py" -c 'import torch' 2>/dev/null; then
  have_torch=1
else
  echo "PyTorch: not available at $py (set BENCH_VENV or BENCH_PYTHON); skipping the PyTorch reference" >&2
fi

# --- ferrolm ------------------------------------------------------------------------------------------
bin="${FERROLM_BIN:-}"
if [[ -z "$bin" ]]; then
  for c in "${CARGO_TARGET_DIR:-}/release/ferrolm" "$repo/target/release/ferrolm"; do
    [[ -x "$c" ]] && { bin="$c"; break; }
  done
fi
config="${FERROLM_SHAKESPEARE_CONFIG:-$repo/configs/shakespeare-char.toml}"
have_ferrolm=0
if [[ -z "$bin" ]]; then
  echo "ferrolm: binary not found (build with cargo build --release -p ferrolm, or set FERROLM_BIN); skipping" >&2
elif [[ ! -f "$config" ]]; then
  echo "ferrolm: $config not found yet; skipping the ferrolm side" >&2
elif ! "$bin" train --help >/dev/null 2>&1; then
  echo "ferrolm: $bin has no train command; skipping the ferrolm side" >&2
else
  have_ferrolm=1
fi
if (( !have_torch && !have_ferrolm )); then
  echo "shakespeare.sh: neither side is available; nothing to run" >&2
  exit 1
fi

# HOOK (ferrolm side): one full like-for-like run. The config (written by the ferrolm side, not here) must name
# the tiny-shakespeare text with a character tokenizer, split 90/10 like nanoGPT, and train c1 with the recipe
# above (final eval over 200 validation batches); its `train` command
# prints a JSON outcome whose val_loss (or final_val_loss) we report. Adjust here if the CLI changes.
# The config reads data/shakespeare/{train,val} and its tokenizer.json (paths relative to the repo root):
# a character vocabulary and nanoGPT's split (first 90% train, last 10% validation), made once here.
prepare_ferrolm_data() {
  if [[ ! -f "$repo/data/shakespeare/val/index.json" ]]; then
    mkdir -p "$repo/data/shakespeare"
    "$bin" tokenizer train --char --input "$data" --out "$repo/data/shakespeare/tokenizer.json" >&2
    "$bin" tokenizer shards --tokenizer "$repo/data/shakespeare/tokenizer.json" --input "$data" \
      --out "$repo/data/shakespeare" --val-fraction 0.1 >&2
  fi
}

run_ferrolm() {
  prepare_ferrolm_data
  local out; out="$(mktemp -d)"
  local t0 t1; t0=$(date +%s.%N)
  if ! (cd "$repo" && "$bin" train --config "$config" --out "$out/run" --set "train.max_steps=$iters" --set "train.matmul_precision=$matmul" >"$out/stdout" 2>"$out/stderr"); then
    echo "ferrolm train failed:" >&2; tail -20 "$out/stderr" >&2; rm -rf "$out"; return 1
  fi
  t1=$(date +%s.%N)
  python3 - "$out/stdout" "$t0" "$t1" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
start = text.find("{")
outcome = json.loads(text[start:]) if start >= 0 else {}
val = next((outcome[k] for k in ("val_loss", "final_val_loss", "eval_loss") if k in outcome), None)
if val is None and isinstance(outcome.get("val"), dict):
    val = outcome["val"].get("loss")  # `ferrolm train` prints {"val": {"loss": …, "bits_per_byte": …}, …}
print(json.dumps({"impl": "ferrolm", "val_loss": val, "wall_seconds": float(sys.argv[3]) - float(sys.argv[2]),
                  "outcome": outcome}))
EOF
  rm -rf "$out"
}

run_torch() {
  "$py" "$here/shakespeare_torch.py" --data "$data" --threads "$threads" --iters "$iters" --lr-decay-iters "$iters" --matmul "$matmul" --json
}

results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for ((r = 1; r <= repeats; r++)); do
  if (( have_ferrolm )); then
    echo "repeat $r/$repeats: ferrolm ..." >&2
    run_ferrolm | tee -a "$results" || true
  fi
  if (( have_torch )); then
    echo "repeat $r/$repeats: pytorch ..." >&2
    run_torch | tee -a "$results"
  fi
done

python3 - "$results" "$repeats" "$threads" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
print(f"\nShakespeare-char, nanoGPT CPU recipe, {sys.argv[2]} repeat(s), {sys.argv[3]} threads, medians:")
med = {}
for impl in ("ferrolm", "pytorch"):
    rs = [r for r in rows if r.get("impl") == impl and r.get("val_loss") is not None]
    if not rs:
        print(f"  {impl:8} -"); continue
    med[impl] = statistics.median(r["wall_seconds"] for r in rs)
    print(f"  {impl:8} val loss {statistics.median(r['val_loss'] for r in rs):.4f}  wall {med[impl]:.1f} s")
if len(med) == 2:
    print(f"  wall-time ratio ferrolm/pytorch: {med['ferrolm'] / med['pytorch']:.2f}")
EOF
