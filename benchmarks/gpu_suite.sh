#!/usr/bin/env bash
# The GPU measurements in as few calls as a short lease allows.
#
#   bash benchmarks/gpu_suite.sh STAGE[,STAGE...]      # e.g. kernels,decode,train
#
# Stages (each under its own time limit, so one that hangs or crashes leaves the others; the
# limits are the H200 budget, docs/gpu_suite.md, and can be changed with NAME_LIMIT=SECONDS):
#   env        nvidia-smi, versions, jax devices
#   kernels    python -m benchmarks.kernels --quick        (on-device checks + speed vs cuDNN/XLA/fla,
#              then the fused verification kernels vs their jnp reference)
#   hopper     python -m benchmarks.kernels --quick --only=hopper --out=hopper: the Hopper
#              kernels' checks and tables alone (kernels_hopper.md)
#   sweep      python -m benchmarks.kernel_sweep: the kernels' block sizes, warps and stages
#              (Hopper flash and decode, flash forward, decode attention, the samplers), each
#              setting checked against its reference and timed, within $SWEEP_LIMIT - 30 s
#   decode     python -m benchmarks.decode_ar $DECODE_ARGS (base, bf16, batch 1 and 32, context
#              512, vs transformers; DECODE_IMPLS=auto,mosaic adds the model's decode with our
#              Hopper kernels)
#   train      python -m benchmarks.train_throughput --preset=base: MFU, one sweep of remat x
#              batch x attention implementation (auto = cuDNN's causal kernel, mosaic = ours)
#   delta      python -m benchmarks.deltaproduct --preset=gpu (chunked vs naive scan)
#   fwd_cost   python -m benchmarks.forward_cost, presets base,small,mem,tiny, batch 1 and 8, bf16
#              (the forward-cost curve: which preset is memory-bound here; issue 19 section 2)
#   spec_system  python -m benchmarks.spec_system --preset=base --dtype=float32 (oracle
#              drafts at controlled acceptance; issue 19 section 3, goal chain >= 3x AR; fp32
#              at full matmul precision: in bf16 on random weights the first 2026-12-04 H200
#              run's verify and AR forwards broke near-ties apart, tau fell to 1.1)
#   spec_bf16  the same in bf16 (as the issue's GPU goal asks), `base` with its embedding x30
#              (cost_model.random_model: the greedy text is degenerate, a repeated token, but AR
#              and verify forwards no longer split near-ties) and padded one-row products
#   t1         why a batch-1 one-token forward of `base` cost 1.8x a two-token one on the
#              H200: python -m benchmarks.matvec_probe, then benchmarks.forward_cost at batch 1,
#              T = 1, 2 for $T1_PRESETS under each XLA setting of $T1_VARIANTS
#   step_cost  python -m benchmarks.step_cost --preset=base --dtype=float32 --batches=1 (where
#              a step's time goes on a memory-bound target; issue 19 section 1)
#   spec       python -m benchmarks.speculative on the runs under $SPEC_RUNS (default runs/spec)
#   spec_small = small_target,drafters,small_bench (each also a stage of its own):
#              trains a `small` target (BPE 32k), then at once a distilled `tiny` draft, Medusa
#              heads, MTP modules, a Kangaroo adapter and EAGLE-3 on it (drafting over the
#              8192 commonest of the 32k tokens, $EAGLE_ARGS; Medusa over the whole vocabulary
#              unless $MEDUSA_ARGS says --config.spec.draft_vocab=N: then drop the method
#              'medusa (quarter vocabulary)' from $SMALL_METHODS, which gives whole-vocabulary
#              heads a decode-time set), then every speculative decoder against our AR on them
#              (at 0.8M parameters a decode step is launch-bound)
#   peer       python -m benchmarks.spec_peer on the spec_small runs: our AR, draft chain,
#              prompt lookup and spec_small's fastest method against transformers' generate(),
#              assisted generation and prompt lookup on the same exported weights
#   graphs     spec_system as spec_bf16, chain k=4 drafting unrolled (the default), in a
#              fixed-count loop and in a while loop, every program (AR's included) compiled
#              twice in one run: XLA's defaults, and with command buffers (CUDA graphs) for
#              while loops and conditionals too ($GRAPH_TYPES): which removes the bf16
#              chain's time outside the target forward?
#   ops        benchmarks.step_ops of $OPS_PRESET in bf16 (compiles only, no timing): the
#              operations one decode step executes in the GPU's own compiled program (its
#              kernels and library calls) for AR, the k = 4 chain drafting unrolled, in a
#              fixed-count and in a while loop, the 16-node dynamic tree, Medusa and EAGLE-3;
#              on a launch-bound GPU, what the loop's time outside the forward is made of;
#              and the bytes each step's operations move against the weights and cache an
#              AR step must read (a copy of a weight or a cache inside the loop shows there),
#              the programs themselves kept in $OUT/hlo.tgz; then AR with the fused
#              projection layout (model.fused_projections)
#   fwd_small  benchmarks.forward_cost of $FWD_SMALL_PRESETS at batch 1, T = 1, 2, bf16:
#              the defaults (one-row products padded to 2 rows per projection), unpadded,
#              padded once per call (model.pad_rows=model), and with fused q/k/v and gate/up
#              weights (model.fused_projections: 4 products a layer instead of 7): what the
#              padding costs a launch-bound `small`, whether `base`'s one-token forward then
#              costs what its two-token one does, and what fewer, larger products save
#   star       issue 18's planning comparison at a size the CPU cannot train: path-star graphs
#              (data/tasks/stargraph.py), ILM, AR and MDLM of preset $STAR_SIZE trained at once
#              for $STAR_STEPS steps each, then python -m benchmarks.insertion --parts=star3
#              (on CPU, tiny at 12000 steps, none of the three learns the edge lookups)
#   lossy      issue 18's lossy cheaper-step decoders (SkipDecode, early exit, BitLM per-token
#              and folded, HAMburger) on an HBM-bound target: python -m benchmarks.lossy_speed
#              --preset=$LOSSY_PRESET --dtype=bfloat16 (random weights, speed only, each row
#              next to its ideal; on CPU the `mem` preset ran at 0.59-1.02 of its ideals)
#
# The calls of issue 19 (each within the 10 minutes of one call on an H200):
#   bash benchmarks/gpu_suite.sh spec_small,peer              # section 4: real drafters
#   bash benchmarks/gpu_suite.sh t1,spec_system,step_cost     # sections 1-3 (ran 2026-12-04)
#   FWD_PRESETS=small,mem,tiny bash benchmarks/gpu_suite.sh spec_bf16,fwd_cost,step_cost
#   bash benchmarks/gpu_suite.sh graphs,fwd_small,ops          # fwd_small and ops time allowing
#   bash benchmarks/gpu_suite.sh star,lossy                    # issue 18, after issue 19's calls
#                          # section 3's goal in bf16 (spec_bf16), the rest of call 2: the
#                          # curve of small, mem, tiny (padded one-row products now the bf16
#                          # default) and the tree and Medusa rows of the step cost
#
# Every results file records the commit of the code that ran (benchmarks/common.py); a copy
# without .git (a lent machine gets the working tree only) takes it from $LEAPFROG_COMMIT, so
# start the suite with it, e.g.
#   LEAPFROG_COMMIT="$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- . ':!benchmarks/results' || echo ' + uncommitted changes (dirty)')" bash benchmarks/gpu_suite.sh ...
#
# Rehearsal on CPU (toy sizes; 3 and 17 minutes on 2 loaded cores, docs/gpu_suite.md; what a
# session without a GPU runs before a session with one spends its minutes):
#   REHEARSE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_suite.sh spec_small,peer
#   REHEARSE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_suite.sh fwd_cost,spec_system,step_cost
# REHEARSE=1 swaps every size for a toy one (the `test` preset with a 512-token BPE vocabulary
# for `small`, 20 training steps, 2 prompts x 32 tokens, ...; the four drafters one after
# another unless PARALLEL_DRAFTERS=1), and writes the runs and the
# results under $REHEARSAL_DIR (default /tmp/gpu_suite_rehearsal) instead of runs/gpu and
# benchmarks/results ($LEAPFROG_RESULTS_DIR, benchmarks/common.py), so that no toy figure can
# be taken for a GPU result. tests/test_gpu_suite.py checks the stages and sizes stay in step.
#
# Missing Python packages travel as wheels in .whl/ (see /work/.library/device/README.md on the
# lent machines and docs/gpu_suite.md for the list; on a normal machine `pip install -r
# requirements.lock` is enough). When $OUT is set (the lent machine), the results folder and
# the log are copied there after every stage.
set -u
cd "$(dirname "$0")/.."
if [ "${REHEARSE:-0}" != 1 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # Python 3.12 ones
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
# One persistent compile cache for all stages: compiling `base` took most of every stage of the
# first H200 run, and spec_system and step_cost build some of the same programs.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/leapfrog-gpu-jax-cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-1}
PY=${PYTHON:-python3}
REHEARSE=${REHEARSE:-0}
SPEC_RUNS=${SPEC_RUNS:-runs/spec}

# Sizes: the H200 budget (docs/gpu_suite.md) or, with REHEARSE=1, toy ones for a CPU.
if [ "$REHEARSE" = 1 ]; then
  R=${REHEARSAL_DIR:-/tmp/gpu_suite_rehearsal}
  mkdir -p "$R/results"
  export LEAPFROG_RESULTS_DIR=$R/results
  RESULTS=$R/results
  : "${SMALL_RUNS:=$R/runs}" "${SMALL_PRESET:=test}" "${SMALL_STEPS:=20}" "${SMALL_BATCH:=4}"
  : "${SMALL_SEQ:=64}" "${SMALL_ARGS:=--config.tokenizer.kind=bpe --config.tokenizer.vocab_size=512}"
  : "${EAGLE_ARGS:=--config.spec.draft_vocab=128}"
  : "${DRAFT_SIZE:=test}" "${DRAFT_STEPS:=20}" "${HEAD_STEPS:=20}" "${DRAFT_BATCH:=4}"
  : "${DRAFT_SEQ:=64}" "${SPEC_PROMPTS:=2}" "${SPEC_NEW:=32}" "${SPEC_REPEATS:=1}"
  : "${PEER_REPEATS:=1}" "${FWD_PRESETS:=test,tiny}" "${FWD_ARGS:=--tokens=1,2,4,8}"
  : "${SYSTEM_PRESET:=test}" "${T1_PRESETS:=test}" "${MATVEC_ARGS:=--steps=3}"
  : "${SYSTEM_ARGS:=--prompts=2 --prompt_tokens=64 --max_new_tokens=32 --alphas=0.8,1.0 --repeats=1}"
  : "${SYSTEM_VERIFIERS:=chain k=4,dynamic tree 8}"
  : "${STEP_PRESET:=test}" "${STEP_ARGS:=--prompts=2 --max_new_tokens=24 --repeats=1}"
  : "${GRAPHS_ARGS:=--prompts=2 --prompt_tokens=64 --max_new_tokens=32 --alphas=0.8 --repeats=1}"
  : "${FWD_SMALL_PRESETS:=test}" "${STAR_SIZE:=test}" "${STAR_STEPS:=20}" "${OPS_PRESET:=test}"
  : "${LOSSY_PRESET:=test}" "${LOSSY_ARGS:=--skips=1 --prompt_tokens=16 --new_tokens=16 --batches=1 --repeats=1}"
  : "${TRAIN_ARGS:=--preset=test --seq_len=64 --batch=2 --remat=none,dots --attention_impl=auto,pallas --steps=2 --dtype=float32 --out=rehearsal}"
  : "${DECODE_ARGS:=--preset=test --dtype=float32 --batch_sizes=1,2 --contexts=64 --new_tokens=16}"
  : "${LIMIT_SCALE:=8}"  # toy sizes, but 2 shared CPU cores: every stage limit x 8
  : "${PARALLEL_DRAFTERS:=0}"  # four trainings at once starve on 2 loaded cores
  LOG=${OUT:-$R}/gpu_suite.log
else
  RESULTS=benchmarks/results
  : "${SMALL_RUNS:=runs/gpu}" "${SMALL_PRESET:=small}" "${SMALL_STEPS:=600}" "${SMALL_BATCH:=32}"
  : "${SMALL_SEQ:=512}" "${SMALL_ARGS:=}"
  : "${EAGLE_ARGS:=--config.spec.draft_vocab=8192}"  # EAGLE-3's quarter of the vocabulary
  : "${DRAFT_SIZE:=tiny}" "${DRAFT_STEPS:=500}" "${HEAD_STEPS:=300}" "${DRAFT_BATCH:=32}"
  : "${DRAFT_SEQ:=512}" "${SPEC_PROMPTS:=8}" "${SPEC_NEW:=128}" "${SPEC_REPEATS:=3}"
  : "${PEER_REPEATS:=2}" "${FWD_PRESETS:=base,small,mem,tiny}" "${FWD_ARGS:=}"
  : "${SYSTEM_PRESET:=base}" "${T1_PRESETS:=base}" "${MATVEC_ARGS:=}"
  : "${SYSTEM_ARGS:=--repeats=2 --alphas=0.7,0.8,1.0}"
  : "${STEP_PRESET:=base}" "${STEP_ARGS:=--prompts=4 --max_new_tokens=64 --repeats=3}"
  : "${GRAPHS_ARGS:=--repeats=2 --alphas=0.8}" "${FWD_SMALL_PRESETS:=small,base}" "${OPS_PRESET:=base}"
  : "${STAR_SIZE:=mem}" "${STAR_STEPS:=8000}"
  : "${LOSSY_PRESET:=base}" "${LOSSY_ARGS:=--skips=8 --batches=1 --repeats=3}"  # 6 compiles of `base`
  # remat x batch x attention (issue 16 section 3): cuDNN's causal kernel beside our Hopper one
  : "${TRAIN_ARGS:=--preset=base --remat=dots,block --batch=16,8 --attention_impl=auto,mosaic}"
  : "${DECODE_ARGS:=--preset=base --dtype=bfloat16 --batch_sizes=1,32 --contexts=512}"
  LOG=${OUT:-/tmp}/gpu_suite.log
fi
LIMIT_SCALE=${LIMIT_SCALE:-1} PARALLEL_DRAFTERS=${PARALLEL_DRAFTERS:-1}
SPEC_DTYPE=${SPEC_DTYPE:-bfloat16}
SYSTEM_VERIFIERS=${SYSTEM_VERIFIERS:-chain k=4,dynamic tree 16}
SYSTEM_DTYPE=${SYSTEM_DTYPE:-float32}
# t1: XLA's defaults, Triton GEMM fusions off, cuBLASLt on (an option this XLA lacks is
# reported and skipped)
T1_VARIANTS=${T1_VARIANTS:-default,no_triton_gemm:xla_gpu_enable_triton_gemm=false,cublaslt:xla_gpu_enable_cublaslt=true}
# Every speculative decoder of benchmarks/speculative.py, the likeliest winners first (the raw
# file is written after each method, so a stage cut short by its limit keeps the first ones).
# (The 2026-12-04 run measured the first three of the old order: draft chain g4, draft dynamic
# tree 32, medusa; now EAGLE-3 and prompt lookup come first among those not yet measured.)
SMALL_METHODS=${SMALL_METHODS:-medusa,medusa (quarter vocabulary),eagle3 dynamic tree 32,prompt lookup,draft dynamic tree 32,draft dynamic tree 32 (quarter vocabulary),draft chain g4,mtp,kangaroo,token recycling,layerskip,lookahead,eagle3 chain g4,jacobi,draft static tree 60,del}
STEP_DECODERS=${STEP_DECODERS:-ar,speculative:gamma=4,spec_dynamic:tree_nodes=16,medusa}
OPS_DECODERS=${OPS_DECODERS:-ar,speculative:gamma=4,speculative:gamma=4:draft_loop=fixed,speculative:gamma=4:draft_loop=while,spec_dynamic:tree_nodes=16,medusa,eagle3}
# Command buffers (CUDA graphs) for every command type, while loops and conditionals included
# (XLA's default leaves those two out, so each decode-loop iteration returns to the host)
GRAPH_TYPES=${GRAPH_TYPES:-FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE}
STEP_DTYPE=${STEP_DTYPE:-float32}  # the oracle draft of its draft-model rows, as spec_system

# The compiled programs the `ops` stage counts (HLO text, gzipped): they come back in
# $OUT/hlo.tgz, so a session without a device can read the device's programs again
# (python -m benchmarks.step_ops --from_hlo=FILE: ops, bytes, largest movers per step).
HLO_DIR=${HLO_DIR:-/tmp/leapfrog-hlo}  # outside $OUT: at most 8 files come back from there

save() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/results.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")" 2>/dev/null
    if ls "$HLO_DIR"/*.hlo.gz >/dev/null 2>&1; then
      tar czf "$OUT/hlo.tgz" -C "$HLO_DIR" . 2>/dev/null
    fi
  fi
}

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$(($2 * LIMIT_SCALE)); shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s" | tee -a "$LOG"
  save
}

parallel_stage() {  # parallel_stage NAME SECONDS LABEL 'COMMAND' [LABEL 'COMMAND' ...]
  # The commands run at once (each its own process on the one GPU, memory grown on demand
  # instead of preallocated), each under the same limit; exit status: the last failure's.
  local name=$1 limit=$(($2 * LIMIT_SCALE)); shift 2
  echo "=== $name (limit ${limit}s, $(($# / 2)) runs at once)" | tee -a "$LOG"
  local t0=$SECONDS rc=0 pids=() labels=()
  while [ $# -ge 2 ]; do
    local label=$1 cmd=$2; shift 2
    echo "--- $label: $cmd" | tee -a "$LOG"
    ( XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 \
        timeout --signal=INT --kill-after=15 "$limit" bash -c "$cmd" 2>&1 \
        | sed -u "s/^/[$label] /" | tee -a "$LOG"; exit "${PIPESTATUS[0]}" ) &
    pids+=($!) labels+=("$label")
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; local r=$?
    echo "--- ${labels[$i]}: exit $r after $((SECONDS - t0))s" | tee -a "$LOG"
    [ "$r" = 0 ] || rc=$r
  done
  echo "=== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
  save
}

w=$SMALL_RUNS
small_raw=$RESULTS/speculative_raw_gpu_small
[ "$REHEARSE" = 1 ] && small_raw=$RESULTS/speculative_raw_rehearsal_small
tok_args="--config.tokenizer.kind=bpe --config.tokenizer.path=$w/small/tokenizer"
# Settings shared by the drafter runs: sizes, the target, a checkpoint halfway (a run cut short
# by the stage's limit still leaves one), no progress bar in the log.
drafter_args() {  # drafter_args STEPS
  echo "--config.spec.target_workdir=$w/small $tok_args --config.train.steps=$1" \
    "--config.train.warmup_steps=$(($1 / 10)) --config.train.eval_every=$(($1 / 2))" \
    "--config.train.checkpoint_every=$(($1 / 2)) --config.train.eval_batches=4" \
    "--config.train.progress_bar=False --config.data.seq_len=$DRAFT_SEQ" \
    "--config.data.batch_size=$DRAFT_BATCH"
}

stages=${1:?usage: bash benchmarks/gpu_suite.sh STAGE[,STAGE...]}
# spec_small = its three parts (each can also run alone, e.g. to measure again)
stages=${stages//spec_small/small_target,drafters,small_bench}
for s in ${stages//,/ }; do
  case $s in
    env)
      stage env 120 bash -c 'nvidia-smi; python3 -c "import jax, flax, torch; print(jax.__version__, flax.__version__, torch.__version__, jax.devices())"' ;;
    kernels) stage kernels "${KERNELS_LIMIT:-330}" $PY -m benchmarks.kernels --quick ;;
    hopper)  # the Hopper kernels' section alone (never run on a GPU): kernels_hopper.md
      stage hopper "${HOPPER_LIMIT:-200}" $PY -m benchmarks.kernels --quick --only=hopper \
        --out=hopper ;;
    sweep)  # the budget leaves the stage time to write its file after the last setting
      stage sweep "${SWEEP_LIMIT:-180}" $PY -m benchmarks.kernel_sweep \
        --budget_s=$(( ${SWEEP_LIMIT:-180} * LIMIT_SCALE - 30 )) \
        $( [ "$REHEARSE" = 1 ] && echo "--rehearse --out=rehearsal" ) ;;
    decode)
      stage decode "${DECODE_LIMIT:-200}" $PY -m benchmarks.decode_ar $DECODE_ARGS \
        --attention_impls="${DECODE_IMPLS:-auto}" ;;
    train)  # one sweep (batch 16 x 2048 needs rematerialisation on 80 GB: XLA asked for 174 GB
      # without); the budget leaves the last setting started about 60 s to compile and run
      stage train "${TRAIN_LIMIT:-240}" env XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 \
        $PY -m benchmarks.train_throughput $TRAIN_ARGS \
        --budget_s=$(( ${TRAIN_LIMIT:-240} * LIMIT_SCALE - 60 )) ;;
    delta) stage delta "${DELTA_LIMIT:-150}" $PY -m benchmarks.deltaproduct --preset=gpu ;;
    fwd_cost)
      stage fwd_cost "${FWD_LIMIT:-190}" $PY -m benchmarks.forward_cost \
        --presets="$FWD_PRESETS" --batches=1,8 --dtype=bfloat16 $FWD_ARGS ;;
    spec_system)  # fp32 products at full precision (no TF32), so verify and AR agree
      stage spec_system "${SYSTEM_LIMIT:-230}" env JAX_DEFAULT_MATMUL_PRECISION=highest \
        $PY -m benchmarks.spec_system --preset="$SYSTEM_PRESET" --dtype="$SYSTEM_DTYPE" \
        --verifiers="$SYSTEM_VERIFIERS" $SYSTEM_ARGS ;;
    spec_bf16)  # bf16; embedding x30 so that AR and verify agree (degenerate text)
      stage spec_bf16 "${BF16_LIMIT:-200}" $PY -m benchmarks.spec_system \
        --preset="$SYSTEM_PRESET" --dtype=bfloat16 --embed_scale=30 \
        --verifiers="$SYSTEM_VERIFIERS" $SYSTEM_ARGS \
        --out=spec_system_$( [ "$REHEARSE" = 1 ] && echo rehearsal || echo gpu_h200)_bf16 ;;
    graphs)  # one run, two compiles of every program: XLA's defaults, command buffers
      stage graphs "${GRAPHS_LIMIT:-330}" $PY -m benchmarks.spec_system \
        --preset="$SYSTEM_PRESET" --dtype=bfloat16 --embed_scale=30 \
        --verifiers="chain k=4,chain k=4 (fixed-count loop),chain k=4 (while loop)" \
        $GRAPHS_ARGS --variants="default;graphs:xla_gpu_enable_command_buffer=$GRAPH_TYPES" \
        --out=spec_system_$( [ "$REHEARSE" = 1 ] && echo rehearsal || echo gpu_h200)_graphs ;;
    ops)  # compiles only: no timing, so any load on the machine leaves the counts alone;
      # then AR again with the fused projection layout (one more compile of about 15 s)
      OPS_OUT=$( [ "$REHEARSE" = 1 ] && echo rehearsal || echo gpu_h200)
      stage ops "${OPS_LIMIT:-120}" bash -c "$PY -m benchmarks.step_ops --preset=$OPS_PRESET \
          --dtype=bfloat16 --decoders=$OPS_DECODERS --dump_hlo=$HLO_DIR --out=$OPS_OUT &&
        $PY -m benchmarks.step_ops --preset=$OPS_PRESET --dtype=bfloat16 \
          --decoders=ar --model=fused_projections=true \
          --dump_hlo=$HLO_DIR/fused --out=${OPS_OUT}_fused" ;;
    fwd_small)
      stage fwd_small "${FWD_SMALL_LIMIT:-120}" $PY -m benchmarks.forward_cost \
        --presets="$FWD_SMALL_PRESETS" --batches=1 --tokens=1,2 --dtype=bfloat16 \
        --out=forward_cost_small_rows \
        --variants="default;rows1:model.min_matmul_rows=1;padcall:model.pad_rows=model:model.min_matmul_rows=2;fused:model.fused_projections=true" ;;
    t1)  # the XLA settings compared in one process (per-compile options), model built once
      stage t1 "${T1_LIMIT:-200}" bash -c "$PY -m benchmarks.matvec_probe $MATVEC_ARGS
         $PY -m benchmarks.forward_cost --presets=$T1_PRESETS --batches=1 --tokens=1,2 \
           --dtype=bfloat16 --out=forward_cost_t1 --variants=$T1_VARIANTS" ;;
    step_cost)
      stage step_cost "${STEP_LIMIT:-140}" env JAX_DEFAULT_MATMUL_PRECISION=highest \
        $PY -m benchmarks.step_cost --preset="$STEP_PRESET" \
        --dtype="$STEP_DTYPE" --batches=1 --decoders="$STEP_DECODERS" $STEP_ARGS \
        --out="$STEP_PRESET"_${STEP_DTYPE}_$( [ "$REHEARSE" = 1 ] && echo rehearsal || echo gpu) ;;
    spec)
      raw=$RESULTS/speculative_raw_gpu
      stage spec "${SPEC_LIMIT:-240}" $PY -m benchmarks.speculative --temperature=0 \
        --batch_size=1 --target="$SPEC_RUNS/target" --draft="$SPEC_RUNS/draft" \
        --medusa="$SPEC_RUNS/medusa" --mtp="$SPEC_RUNS/mtp" --kangaroo="$SPEC_RUNS/kangaroo" \
        --raw_dir=$raw --methods="${SPEC_METHODS:-draft chain g4,draft dynamic tree 60,draft static tree 60,prompt lookup,token recycling,layerskip,medusa,mtp}"
      stage spec_report 60 $PY -m benchmarks.speculative --report --raw_dir=$raw ;;
    small_target)  # `small`: 110M parameters, BPE 32k, bf16 compute
      stage small_target "${SMALL_TARGET_LIMIT:-150}" $PY train.py \
        --config=configs/lm.py:$SMALL_PRESET --workdir=$w/small \
        --config.train.steps=$SMALL_STEPS --config.train.warmup_steps=$((SMALL_STEPS / 10)) \
        --config.data.batch_size=$SMALL_BATCH --config.data.seq_len=$SMALL_SEQ \
        --config.train.eval_every=$((SMALL_STEPS / 2)) --config.train.eval_batches=4 \
        --config.train.checkpoint_every=$((SMALL_STEPS / 2)) --config.train.log_every=$((SMALL_STEPS / 10)) \
        --config.train.progress_bar=False --config.model.dtype=bfloat16 $SMALL_ARGS ;;
    drafters)  # they only read the target: trained at once (their compiles overlap)
      heads=configs/spec_heads.py
      runs=(draft "$PY train.py --config=configs/spec_draft.py:corpus,$DRAFT_SIZE --workdir=$w/draft $(drafter_args "$DRAFT_STEPS")"
        medusa "$PY train.py --config=$heads:medusa,$SMALL_PRESET --workdir=$w/medusa --config.model.dtype=bfloat16 $(drafter_args "$HEAD_STEPS") ${MEDUSA_ARGS:-}"
        mtp "$PY train.py --config=$heads:mtp,$SMALL_PRESET --workdir=$w/mtp --config.model.dtype=bfloat16 $(drafter_args "$HEAD_STEPS")"
        kangaroo "$PY train.py --config=$heads:kangaroo,$SMALL_PRESET --workdir=$w/kangaroo --config.model.dtype=bfloat16 $(drafter_args "$HEAD_STEPS")"
        eagle3 "$PY train.py --config=$heads:eagle3,$SMALL_PRESET --workdir=$w/eagle3 --config.model.dtype=bfloat16 $(drafter_args "$HEAD_STEPS") $EAGLE_ARGS")
      if [ "$PARALLEL_DRAFTERS" = 1 ]; then
        parallel_stage drafters "${DRAFTERS_LIMIT:-130}" "${runs[@]}"
      else  # one after another, each with the whole limit (the rehearsal on a loaded CPU)
        for i in 0 2 4 6 8; do
          parallel_stage "drafters_${runs[$i]}" "${DRAFTERS_LIMIT:-130}" "${runs[@]:$i:2}"
        done
      fi ;;
    small_bench)  # every speculative decoder on the runs above, against our AR
      stage spec_small "${SPEC_SMALL_LIMIT:-150}" $PY -m benchmarks.speculative --temperature=0 \
        --batch_size=1 --dtype="$SPEC_DTYPE" --target=$w/small --draft=$w/draft \
        --medusa=$w/medusa --mtp=$w/mtp --kangaroo=$w/kangaroo --eagle3=$w/eagle3 \
        --raw_dir="$small_raw" \
        --prompts="$SPEC_PROMPTS" --max_new_tokens="$SPEC_NEW" --repeats="$SPEC_REPEATS" \
        --methods="$SMALL_METHODS" ${SPEC_ARGS:-}
      stage spec_small_report 15 $PY -m benchmarks.speculative --report --raw_dir="$small_raw" ;;
    peer)  # the spec_small runs (not those of `spec`): the same weights on both sides
      name=speculative_peer_gpu_small
      [ "$REHEARSE" = 1 ] && name=speculative_peer_rehearsal
      best=$small_raw/t0_b1.json
      stage peer "${PEER_LIMIT:-120}" $PY -m benchmarks.spec_peer --target=$w/small \
        --draft=$w/draft --medusa=$w/medusa --mtp=$w/mtp --kangaroo=$w/kangaroo \
        --eagle3=$w/eagle3 \
        --dtype="$SPEC_DTYPE" --methods="draft chain g4,prompt lookup" \
        $( [ -f "$best" ] && echo "--best_from=$best" ) --prompts="$SPEC_PROMPTS" \
        --max_new_tokens="$SPEC_NEW" --repeats="$PEER_REPEATS" --name=$name ${PEER_ARGS:-} ;;
    star)  # three trainings at once (each checkpoints halfway, so a cut leaves a shared step)
      star_args="--config.train.steps=$STAR_STEPS --config.train.eval_every=$((STAR_STEPS / 2))"
      star_args="$star_args --config.train.checkpoint_every=$((STAR_STEPS / 2))"
      star_args="$star_args --config.train.log_every=$((STAR_STEPS / 10)) --config.train.progress_bar=False"
      runs=()
      for k in ilm ar mdlm; do
        runs+=("$k" "$PY train.py --config=configs/diffusion_tasks.py:star3,$k,$STAR_SIZE --workdir=$w/star3_$k $star_args")
      done
      parallel_stage star "${STAR_LIMIT:-300}" "${runs[@]}"
      stage star_bench "${STAR_BENCH_LIMIT:-90}" $PY -m benchmarks.insertion --parts=star3 \
        --runs=$w --out=insertion_star3_$( [ "$REHEARSE" = 1 ] && echo rehearsal || echo gpu_h200) ;;
    lossy)
      stage lossy "${LOSSY_LIMIT:-180}" $PY -m benchmarks.lossy_speed --preset="$LOSSY_PRESET" \
        --dtype=bfloat16 $LOSSY_ARGS ;;
    *) echo "unknown stage $s" ;;
  esac
done
