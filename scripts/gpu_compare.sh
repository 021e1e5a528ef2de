#!/usr/bin/env bash
# Issue 33 on a lent GPU: momentkit against the official code, side by side, in one command.
#
#   scripts/gpu_compare.sh OFFICIAL OUT [RUN ...]
#
# OFFICIAL holds the checkouts, one folder each, named as this project names them:
# line+lighthouse, qingchen239+ld-detr, snailma0229+MS-DETR, yingsen1+UniMD (only their code
# folders are needed). OUT receives two files: all.log (every run's output) and results.jsonl
# (one JSON object a run, as `momentkit bench ... --json` writes it, plus "run" and "rc").
# RUN names runs of the table below (default: all, in its order, most wanted first).
#
# The GPU machine of this workplace has PyTorch but not momentkit: the package is imported from
# this checkout (PYTHONPATH); `momentkit bench train|infer` import nothing that machine lacks
# (checked here with PyAV, FastAPI, faiss & co. blocked). The checkouts travel with the working
# tree from an ignored folder:
#
#   mkdir -p .official && cp -r /path/to/official/* .official/     # .official/ is git-ignored
#   device run (carry [".official"]):  bash scripts/gpu_compare.sh .official "$OUT"
#
# BUDGET (seconds, default 540) stops starting runs once spent, so the command ends inside the
# device's 10-minute limit; name the remaining runs in a second call. DEVICE (default cuda) and
# STEPS (training steps per side, default 15) exist for a rehearsal on a CPU; BENCH_ARGS adds
# arguments to every run (smaller shapes, e.g. "--batch-size 4 --clips 10 --tokens 9"):
#
#   DEVICE=cpu STEPS=2 bash scripts/gpu_compare.sh /path/to/official /tmp/out train-fp32-qd_detr
#
# Each run is an independent process: one that fails (its rc and error are in the log) does
# not stop the others. fp32 runs keep TF32 off on both sides (the same IEEE arithmetic as the
# CPU tables); bf16 runs put both sides under bf16 autocast with TF32 on, except LD-DETR, whose
# release fails under bf16 autocast (ld_detr/methods.py:242) and runs in float32 there
# (--official-precision fp32, a different arithmetic, said in the output).
set -u
if [ $# -lt 2 ]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
official=$(cd "$1" && pwd) || exit 2
out=$2
shift 2
mkdir -p "$out" || exit 2
log="$out/all.log"
results="$out/results.jsonl"
: >"$log"
: >"$results"
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
steps=${STEPS:-15}
budget=${BUDGET:-540}
read -r -a extra <<<"${BENCH_ARGS:-}"
start=$(date +%s)

checkout() {
    case $1 in
    moment_detr | qd_detr) echo "$official/line+lighthouse" ;;
    ld_detr) echo "$official/qingchen239+ld-detr" ;;
    ms_detr) echo "$official/snailma0229+MS-DETR" ;;
    unimd) echo "$official/yingsen1+UniMD" ;;
    esac
}

# name: what model precision
all_runs=()
for what in train infer; do
    for model in moment_detr qd_detr ld_detr ms_detr; do all_runs+=("$what-fp32-$model"); done
done
for what in train infer; do
    for model in moment_detr qd_detr ld_detr ms_detr; do all_runs+=("$what-bf16-$model"); done
done
all_runs+=(train-fp32-unimd infer-fp32-unimd train-bf16-unimd infer-bf16-unimd)
if [ $# -gt 0 ]; then runs=("$@"); else runs=("${all_runs[@]}"); fi

{
    echo "# gpu_compare.sh on $(hostname) at $(date -u +%FT%TZ), device $device, budget ${budget}s"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    "$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
    git -C "$here" rev-parse HEAD 2>/dev/null || echo "momentkit: not a git checkout"
} >>"$log" 2>&1

for run in "${runs[@]}"; do
    IFS=- read -r what precision model <<<"$run"
    dir=$(checkout "$model")
    if [ -z "$dir" ] || { [ "$what" != train ] && [ "$what" != infer ]; } ||
        { [ "$precision" != fp32 ] && [ "$precision" != bf16 ]; }; then
        echo "unknown run '$run' (WHAT-PRECISION-MODEL, e.g. train-fp32-qd_detr)" | tee -a "$log"
        continue
    fi
    elapsed=$(($(date +%s) - start))
    if [ "$elapsed" -ge "$budget" ]; then
        echo "## $run: not started, ${elapsed}s of the ${budget}s budget spent" | tee -a "$log"
        continue
    fi
    args=(bench "$what" --model "$model" --official-dir "$dir" --device "$device")
    if [ "$what" = train ]; then args+=(--items 0 --steps "$steps"); fi
    if [ "$precision" = bf16 ]; then
        args+=(--precision bf16)
        if [ "$device" != cpu ]; then args+=(--tf32); fi
        if [ "$model" = ld_detr ]; then args+=(--official-precision fp32); fi
    fi
    args+=("${extra[@]}")
    json="$out/.run.json"
    rm -f "$json"
    echo "## $run: momentkit ${args[*]}" >>"$log"
    t0=$(date +%s)
    "$py" -m momentkit "${args[@]}" --json "$json" >>"$log" 2>&1
    rc=$?
    echo "## $run: rc $rc, $(($(date +%s) - t0)) s" | tee -a "$log"
    if [ -s "$json" ]; then
        "$py" -c 'import json, sys; d = json.load(open(sys.argv[1])); d.update(run=sys.argv[2], rc=int(sys.argv[3])); print(json.dumps(d))' \
            "$json" "$run" "$rc" >>"$results"
    else
        echo "{\"run\": \"$run\", \"rc\": $rc}" >>"$results"
    fi
    rm -f "$json"
done
echo "# done after $(($(date +%s) - start)) s" >>"$log"
