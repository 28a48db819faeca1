#!/usr/bin/env bash
# Every command behind the README's numbers, on a fresh clone of one commit, one after the other, each timed.
#
#   scripts/readme_runs.sh OUT [COMMIT] [STEPS]
#
# clones this repository at COMMIT (default HEAD) into OUT/clone, runs the steps in order (default all of them)
# and writes each step's stdout, stderr and `/usr/bin/time -v` figures to OUT/<step>.out / .err. An experiment prints
# its result directory last, so OUT/<step>.out's last line is where its numbers are. All the steps take about
# 2 h on the project's 2-core CPU machine (the sum of each step's time, measured one by one); a step reuses
# whatever stage an earlier one finished (the demo's model and rebound serve scaling and the algorithms, the scaling
# ladder the sweep).
#
# Steps: demo scaling sweep ladder resistance4 algorithms algorithms_rl bench
set -euo pipefail

OUT=$(realpath -m "${1:?usage: scripts/readme_runs.sh OUT [COMMIT] [STEPS...]}")
COMMIT=${2:-HEAD}
shift $(( $# > 1 ? 2 : 1 ))
STEPS=${*:-demo scaling sweep ladder resistance4 algorithms algorithms_rl bench}
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)

mkdir -p "$OUT"
if [ ! -d "$OUT/clone" ]; then
  git clone -q "$REPO" "$OUT/clone"
  git -C "$OUT/clone" checkout -q "$(git -C "$REPO" rev-parse "$COMMIT")"
fi
cd "$OUT/clone"
git log --oneline -1 > "$OUT/commit.txt"

timed() {  # timed STEP COMMAND...: run it, its output and its time in OUT/STEP.*
  local step=$1; shift
  echo "[readme_runs] $step: $*" >&2
  /usr/bin/time -v "$@" > "$OUT/$step.out" 2> "$OUT/$step.err"
}

world() { ls -d runs/world-* | head -1; }
final_1m() {  # the demo's 1m model: the pre-training run its resistance section trained from (the scaling run
  # lists the same run as "1m")
  sed -n 's/^model: //p' "$(ls -d runs/resistance-* | head -1)/config.yaml" | head -1
}

for step in $STEPS; do
  case $step in
    demo) timed demo make demo ;;
    scaling) timed scaling .venv/bin/elasticity scaling --config configs/scaling-world.yaml ;;
    sweep) timed sweep .venv/bin/python scripts/ladder_sweep.py ;;
    ladder) timed ladder .venv/bin/elasticity demo --rebound_preset configs/rebound-world.yaml ;;
    resistance4) W=$(world); timed resistance4 .venv/bin/elasticity resistance --config configs/resistance-demo.yaml \
        --model "$(final_1m)" --alignment "$W/sft_positive.jsonl" --prompts "$W/eval_prompts.jsonl" \
        --scorer.world "$W" --prompt_limit 0 --policy.samples_per_prompt 4 --eval.loss_window 20 ;;
    algorithms) timed algorithms .venv/bin/elasticity algorithms --config configs/algorithms-world.yaml ;;
    algorithms_rl) timed algorithms_rl .venv/bin/elasticity algorithms --config configs/algorithms-rl-world.yaml ;;
    bench) .venv/bin/python -m pip install -q -e '.[bench]'
      timed bench_train .venv/bin/python benchmarks/train_vs_trl.py --trl-padding-free
      timed bench_compress .venv/bin/python benchmarks/compress_vs_lm_eval.py --docs 200 --repeats 3 \
        --max-length 64 256 1024
      timed bench_memory .venv/bin/python benchmarks/memory_rebound.py ;;
    *) echo "readme_runs: unknown step '$step' (steps: demo scaling sweep ladder resistance4 algorithms algorithms_rl bench)" >&2; exit 2 ;;
  esac
done
echo "[readme_runs] done: $OUT" >&2
