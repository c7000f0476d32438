#!/usr/bin/env bash
# Real drafters on a trained, memory-bound target on 2 CPU cores (issue "Faster than AR").
#
#   bash benchmarks/spec_mem_cpu.sh                  # every stage, about 75 minutes on 2 cores
#   bash benchmarks/spec_mem_cpu.sh bench            # measure again on the runs already trained
#
# Stages (comma-separated, in this order by default):
#   target  the `mem` preset (31.6M parameters, 126 MB of fp32 weights, four times the
#           32 MB last-level cache: a batch-1 decode step reads the weights from DRAM) trained
#           on the embedded corpus for $TARGET_STEPS steps of 8 x 256 bytes (~25 minutes)
#   draft   a `tiny` draft (0.8M parameters) distilled from it by KL on the corpus
#   medusa  4 Medusa heads on the frozen target
#   eagle3  an EAGLE-3 draft layer on the frozen target (training-time test, 3 steps),
#           $EAGLE_STEPS steps (~21 minutes)
#   curve   python -m benchmarks.forward_cost of `mem` (random weights, the same shapes) at
#           batch 1 and 8 over the step sizes of the methods below, with the bench's cache size
#   bench   python -m benchmarks.speculative: every method against our AR in the same run,
#           batch 1, greedy, held-out prompts that stay within the training length
#           (120 bytes of prompt + 128 new tokens <= 256), then its report, each row next
#           to its ideal speedup from forward probes of the trained target timed in turns
#           with the row's own passes (the curve serves rows measured without probes)
#   more    the best of those methods again, sampled (temperature 1, batch 1) and greedy at
#           batch 8 (the same prompts in one batch), into the same report
#   peer    python -m benchmarks.spec_peer on the same runs: our AR, draft chain, prompt lookup
#           and bench's fastest method against transformers' generate(), assisted generation
#           (the same distilled draft) and prompt lookup, on the same weights exported
#   layerskip  (not in the default list, ~16 minutes) LayerSkip's recipe: the target fine-tuned
#           $LAYERSKIP_STEPS steps with the early-exit loss (configs/layerskip.py:mem), then
#           python -m benchmarks.layerskip_recipe (held-out loss, each exit's agreement with the
#           final head) and LayerSkip's chain of 4 and adaptive length against AR on the target
#           as trained and as fine-tuned (speculative_raw_mem_cpu_layerskip[_tuned])
# Everything goes to $RUNS (default runs/spec_mem) and benchmarks/results/speculative_raw_mem_cpu
# (.md, acceptance plot), and benchmarks/results/speculative_peer_mem_cpu.md. The drafters
# only read the target, so they can be retrained alone.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs/spec_mem}
TARGET_STEPS=${TARGET_STEPS:-400}
DRAFT_STEPS=${DRAFT_STEPS:-300}
HEAD_STEPS=${HEAD_STEPS:-300}
LAYERSKIP_STEPS=${LAYERSKIP_STEPS:-150}
EAGLE_STEPS=${EAGLE_STEPS:-300}  # 600 measured no higher tau (speculative_raw_mem_cpu_eagle3_600)
PROMPTS=${PROMPTS:-8}
NEW=${NEW:-128}
REPEATS=${REPEATS:-3}
PEER_REPEATS=${PEER_REPEATS:-2}
RAW=${RAW:-benchmarks/results/speculative_raw_mem_cpu}
CURVE=benchmarks/results/forward_cost_mem_spec_cpu.json
MORE_METHODS=${MORE_METHODS:-draft chain g4,draft chain g8,draft chain adaptive length,prompt lookup}
METHODS=${METHODS:-draft chain g4,draft chain g8,draft chain adaptive length,draft dynamic tree 32,draft static tree 32,medusa,eagle3 dynamic tree 32,eagle3 chain g4,prompt lookup,token recycling,layerskip,jacobi}
rows="--config.data.batch_size=8 --config.data.seq_len=256 --config.train.progress_bar=False"
extra() {  # extra STEPS: the schedule of a run beside the frozen target
  echo "--config.spec.target_workdir=$RUNS/target --config.train.steps=$1" \
    "--config.train.warmup_steps=$(($1 / 10)) --config.train.eval_every=$(($1 / 2))" \
    "--config.train.checkpoint_every=$(($1 / 2)) --config.train.log_every=20 $rows"
}
stages=${1:-target,draft,medusa,eagle3,curve,bench,more,peer}
for s in ${stages//,/ }; do
  echo "=== $s"
  case $s in
    target)
      $PY train.py --config=configs/lm.py:mem --workdir=$RUNS/target \
        --config.train.steps=$TARGET_STEPS --config.train.warmup_steps=$((TARGET_STEPS / 10)) \
        --config.train.learning_rate=1.5e-3 --config.train.eval_every=$((TARGET_STEPS / 2)) \
        --config.train.checkpoint_every=100 --config.train.log_every=20 $rows ;;
    draft)
      $PY train.py --config=configs/spec_draft.py:corpus,tiny --workdir=$RUNS/draft \
        $(extra "$DRAFT_STEPS") ;;
    medusa)
      $PY train.py --config=configs/spec_heads.py:medusa,mem --workdir=$RUNS/medusa \
        $(extra "$HEAD_STEPS") ;;
    eagle3)
      $PY train.py --config=configs/spec_heads.py:eagle3,mem --workdir=$RUNS/eagle3 \
        $(extra "$EAGLE_STEPS") ;;
    curve)  # cache slots as bench sizes them: 64-rounded prompt + new + 128
      $PY -m benchmarks.forward_cost --presets=mem --batches=1,8 \
        --tokens=1,2,3,4,5,6,7,8,9,12,16,25,33,48,64,81 --cache=384 --context=184 \
        --out=forward_cost_mem_spec_cpu ;;
    bench)
      $PY -m benchmarks.speculative --target=$RUNS/target --draft=$RUNS/draft \
        --medusa=$RUNS/medusa --eagle3=$RUNS/eagle3 --mtp=$RUNS/mtp --kangaroo=$RUNS/kangaroo \
        --raw_dir=$RAW --temperature=0 --batch_size=1 --prompts=$PROMPTS --prompt_chars=120 \
        --max_new_tokens=$NEW --repeats=$REPEATS --methods="$METHODS"
      $PY -m benchmarks.speculative --report --raw_dir=$RAW \
        $( [ -f "$CURVE" ] && echo "--curve=$CURVE" ) ;;
    more)
      for setting in "--temperature=1 --batch_size=1" "--temperature=0 --batch_size=8"; do
        $PY -m benchmarks.speculative --target=$RUNS/target --draft=$RUNS/draft \
          --medusa=$RUNS/medusa --eagle3=$RUNS/eagle3 --mtp=$RUNS/mtp --kangaroo=$RUNS/kangaroo \
          --raw_dir=$RAW $setting --prompts=$PROMPTS --prompt_chars=120 \
          --max_new_tokens=$NEW --repeats=$REPEATS --methods="$MORE_METHODS"
      done
      $PY -m benchmarks.speculative --report --raw_dir=$RAW \
        $( [ -f "$CURVE" ] && echo "--curve=$CURVE" ) ;;
    peer)
      best=$RAW/t0_b1.json
      $PY -m benchmarks.spec_peer --target=$RUNS/target --draft=$RUNS/draft \
        --medusa=$RUNS/medusa --eagle3=$RUNS/eagle3 --methods="draft chain g4,prompt lookup" \
        $( [ -f "$best" ] && echo "--best_from=$best" ) --prompts=$PROMPTS --prompt_chars=120 \
        --max_new_tokens=$NEW --repeats=$PEER_REPEATS --name=speculative_peer_mem_cpu ;;
    layerskip)
      $PY train.py --config=configs/layerskip.py:mem --workdir=$RUNS/layerskip \
        --config.exit.init_from=$RUNS/target --config.train.steps=$LAYERSKIP_STEPS \
        --config.train.progress_bar=False
      $PY -m benchmarks.layerskip_recipe --base=$RUNS/target --tuned=$RUNS/layerskip \
        --name=layerskip_recipe_mem_cpu
      for run in target:layerskip layerskip:layerskip_tuned; do
        out=benchmarks/results/speculative_raw_mem_cpu_${run#*:}
        $PY -m benchmarks.speculative --target=$RUNS/${run%%:*} --raw_dir=$out \
          --temperature=0 --batch_size=1 --prompts=$PROMPTS --prompt_chars=120 \
          --max_new_tokens=$NEW --repeats=$REPEATS --methods="layerskip,layerskip adaptive length"
        $PY -m benchmarks.speculative --report --raw_dir=$out \
          $( [ -f "$CURVE" ] && echo "--curve=$CURVE" )
      done ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done
