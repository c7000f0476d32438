#!/usr/bin/env bash
# The GPU measurements in as few calls as a short lease allows.
#
#   bash benchmarks/gpu_suite.sh STAGE[,STAGE...]      # e.g. kernels,decode,train
#
# Stages (each under its own time limit, so one that hangs or crashes leaves the others):
#   env       nvidia-smi, versions, jax devices
#   kernels   python -m benchmarks.kernels --quick        (on-device checks + speed vs cuDNN/XLA/fla)
#   decode    python -m benchmarks.decode_ar --preset=base --dtype=bfloat16 (vs transformers)
#   train     python -m benchmarks.train_throughput --preset=base (MFU)
#   delta     python -m benchmarks.deltaproduct --preset=gpu (chunked vs naive scan)
#   spec      python -m benchmarks.speculative on the runs under $SPEC_RUNS (default runs/spec)
#   spec_small  trains a `small` target and a distilled draft here, then the same benchmark
#             (at 0.8M parameters a decode step is launch-bound; `small` is memory-bound)
#   peer      python -m benchmarks.spec_peer on the same runs (vs transformers assisted generation)
#
# Every results file records the commit of the code that ran (benchmarks/common.py); a copy
# without .git (a lent machine gets the working tree only) takes it from $LEAPFROG_COMMIT, so
# start the suite with it, e.g.
#   LEAPFROG_COMMIT="$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- . ':!benchmarks/results' || echo ' + uncommitted changes (dirty)')" bash benchmarks/gpu_suite.sh ...
#
# Missing Python packages travel as wheels in .whl/ (see /work/.library/device/README.md on the
# lent machines; on a normal machine `pip install -r requirements.lock` is enough). Results go
# to benchmarks/results/ as usual; when $OUT is set (the lent machine), the results folder and
# the log are copied there after every stage.
set -u
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
SPEC_RUNS=${SPEC_RUNS:-runs/spec}
LOG=${OUT:-/tmp}/gpu_suite.log

save() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/results.tgz" benchmarks/results 2>/dev/null
  fi
}

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s" | tee -a "$LOG"
  save
}

for s in ${1//,/ }; do
  case $s in
    env)
      stage env 120 bash -c 'nvidia-smi; python3 -c "import jax, flax, torch; print(jax.__version__, flax.__version__, torch.__version__, jax.devices())"' ;;
    kernels) stage kernels "${KERNELS_LIMIT:-330}" python3 -m benchmarks.kernels --quick ;;
    decode)
      stage decode "${DECODE_LIMIT:-200}" python3 -m benchmarks.decode_ar --preset=base \
        --dtype=bfloat16 --batch_sizes=1,32 --contexts=512 ;;
    train)  # batch 16 x 2048 needs rematerialisation on 80 GB (XLA asked for 174 GB without); fall back
      stage train "${TRAIN_LIMIT:-240}" bash -c 'export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
         python3 -m benchmarks.train_throughput --preset=base --remat=dots ||
         python3 -m benchmarks.train_throughput --preset=base --remat=block ||
         python3 -m benchmarks.train_throughput --preset=base --batch=4' ;;
    delta) stage delta "${DELTA_LIMIT:-150}" python3 -m benchmarks.deltaproduct --preset=gpu ;;
    spec)
      raw=benchmarks/results/speculative_raw_gpu
      stage spec "${SPEC_LIMIT:-240}" python3 -m benchmarks.speculative --temperature=0 \
        --batch_size=1 --target="$SPEC_RUNS/target" --draft="$SPEC_RUNS/draft" \
        --medusa="$SPEC_RUNS/medusa" --mtp="$SPEC_RUNS/mtp" --kangaroo="$SPEC_RUNS/kangaroo" \
        --raw_dir=$raw --methods="${SPEC_METHODS:-draft chain g4,draft dynamic tree 60,draft static tree 60,prompt lookup,token recycling,layerskip,medusa,mtp}"
      stage spec_report 60 python3 -m benchmarks.speculative --report --raw_dir=$raw ;;
    spec_small)  # a memory-bound target: `small` (110M, BPE 32k) + a distilled `tiny` draft
      w=${SMALL_RUNS:-runs/gpu}
      stage small_target "${SMALL_TARGET_LIMIT:-240}" python3 train.py \
        --config=configs/lm.py:small --workdir=$w/small --config.train.steps=${SMALL_STEPS:-1000} \
        --config.data.batch_size=32 --config.train.eval_every=500 --config.train.checkpoint_every=500 \
        ${SMALL_ARGS:-}
      stage small_draft "${SMALL_DRAFT_LIMIT:-150}" python3 train.py \
        --config=configs/spec_draft.py:corpus,tiny --workdir=$w/draft \
        --config.spec.target_workdir=$w/small --config.train.steps=${DRAFT_STEPS:-1000} \
        --config.tokenizer.kind=bpe --config.tokenizer.path=$w/small/tokenizer \
        --config.data.seq_len=512 --config.data.batch_size=32 ${DRAFT_ARGS:-}
      raw=benchmarks/results/speculative_raw_gpu_small
      stage spec_small "${SPEC_LIMIT:-240}" python3 -m benchmarks.speculative --temperature=0 \
        --batch_size=1 --target=$w/small --draft=$w/draft --raw_dir=$raw --medusa=$w/medusa \
        --mtp=$w/mtp --kangaroo=$w/kangaroo \
        --methods="${SPEC_METHODS:-draft chain g4,draft dynamic tree 60,draft static tree 60,prompt lookup,token recycling,layerskip}" \
        ${SPEC_ARGS:-}
      stage spec_small_report 60 python3 -m benchmarks.speculative --report --raw_dir=$raw ;;
    peer)
      stage peer "${PEER_LIMIT:-150}" python3 -m benchmarks.spec_peer \
        --target="$SPEC_RUNS/target" --draft="$SPEC_RUNS/draft" --name=speculative_peer_gpu ;;
    *) echo "unknown stage $s" ;;
  esac
done
