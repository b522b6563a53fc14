#!/usr/bin/env bash
# One GPU session's benchmarks, in sequence, from the repository root on the GPU machine (benchmarks/README.md, "H200"):
#   setsid nohup bash benchmarks/gpu_session.sh PLAN /root/res > /root/res.log 2>&1 &
# PLAN: packing (2026-12-02, first session: the 7B shapes packed, checkpointing by memory) or small-model (2026-12-02,
# second session: SmolLM2-135M with its NF4 weights held dense, its learning rate for packed steps, the seeds' epoch,
# label scoring by batch) or current-code (2026-12-02, third session: the 7B shapes on the second session's code, with
# the compile-off path, Falcon's low-memory mode and the seeds' dialogue workload; no GGUF needed) or varlen
# (2026-12-03, fourth session: packed rows' attention by flash varlen, beside the masked SDPA it replaced, and a
# batch of 8,192 tokens; each command also fits one 10-minute call, which is how that session ran them) or
# side-by-side (2026-12-03, fifth session: each 7B shape beside its seeds in one run, then SmolLM2's epoch by the
# number of steps; run one call each there too) or capped (2026-12-03, sixth session: the low-memory mode held to
# the task's batch, every 7B workload beside its seeds, SmolLM2 at 140 steps with and without its LoRA inputs cast)
# or head (2026-12-07: SmolLM2's epoch by label scoring beside the classification head, in the foreground; the
# GGUF's parts, the wheels, the gguf reader and the split travel in two transfers, .bench/gpu1 then .bench/gpu2:
# `split -b 52000000 -d GGUF .bench/gpu1/gguf.part-`, part 01 moved to .bench/gpu2 beside bundle.tar.gz, which
# holds .whl/site without liger_kernel, .bench/instacart_all and the gguf package under .bench/gpu_py).
# It outlasts one 10-minute call, so it runs in the background on the held machine. Each case writes its JSON as it
# goes; a failing command is reported and the next one runs. The SmolLM2 cases wait for its GGUF, which travels in
# parts (/root/gguf.part-*, then /root/gguf.ready): it is larger than what one call carries.
set -u
PLAN=${1:?packing, small-model, current-code, varlen, side-by-side, capped or head}
RES=${2:-/root/res}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1
run() { echo "== $(date -u +%H:%M:%S) $*"; "$@" || echo "!! exit $?: $*"; }

smollm2() {
    while [ ! -f /root/gguf.ready ]; do sleep 5; done
    cat /root/gguf.part-* > /root/SmolLM2-135M-Instruct.Q4_1.gguf
    run python3 -m benchmarks.instacart_smollm2 export /root/SmolLM2-135M-Instruct.Q4_1.gguf /root/smol
}

packing() {
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart full512 \
        --paths seeds project project-low-memory --packing-check --out "$RES"
    smollm2
    run python3 -u -m benchmarks.instacart_smollm2 run --model /root/smol --cases project project-compiled \
        --pipeline-cases none --out "$RES" --work /root/work
    run python3 -m benchmarks.qlora_throughput run --models falcon-7b --workloads instacart full512 \
        --paths seeds project --packing-check --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart dialogue \
        --paths project-padded project --out "$RES"
}

small_model() {
    smollm2
    run python3 -u -m benchmarks.instacart_smollm2 run --model /root/smol --cases project seeds --seeds-budget-s 60 \
        --pipeline-cases none --out "$RES" --work /root/work
    run python3 -u -m benchmarks.label_scoring_batch --model /root/smol --batches 256 512 1024 --layers dense 4bit \
        --out "$RES"
    run python3 -u -m benchmarks.instacart_smollm2 run --model /root/smol --cases project-4bit-layers project-200-steps \
        --pipeline-cases none --out "$RES" --work /root/work
}

current_code() {
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart full512 \
        --paths seeds project project-eager project-low-memory --packing-check --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models falcon-7b --workloads instacart full512 \
        --paths seeds project project-low-memory --packing-check --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads dialogue \
        --paths seeds project --out "$RES"
}

varlen() {
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart full512 \
        --paths seeds project project-low-memory project-8k --packing-check --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart --paths project-masked \
        --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models falcon-7b --workloads instacart full512 \
        --paths seeds project project-masked project-low-memory --packing-check --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads dialogue \
        --paths seeds project --out "$RES"
}

side_by_side() {
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart full512 \
        --paths seeds project project-low-memory --packing-check --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models falcon-7b --workloads instacart --paths seeds project \
        --packing-check --out "$RES"
    smollm2
    run python3 -u -m benchmarks.instacart_smollm2 run --model /root/smol --cases project seeds --seeds-budget-s 60 \
        --pipeline-cases none --out "$RES" --work /root/work
    run python3 -u -m benchmarks.instacart_smollm2 run --model /root/smol --cases project-100-steps-lr3e-3 \
        project-lr2e-3 project-lr3e-3 project-200-steps project-4k project-140-steps project-140-steps-lr3e-3 \
        --pipeline-cases none --out "$RES" --work /root/work
}

capped() {
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart full512 \
        --paths seeds project project-low-memory --packing-check --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models falcon-7b --workloads instacart full512 \
        --paths seeds project project-low-memory --packing-check --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads dialogue \
        --paths seeds project project-eager --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart full512 \
        --paths project-eager --out "$RES"
    run python3 -m benchmarks.qlora_throughput run --models falcon-7b --workloads dialogue --paths seeds project \
        --out "$RES"
    smollm2
    run python3 -u -m benchmarks.instacart_smollm2 run --model /root/smol --cases project seeds --seeds-budget-s 60 \
        --pipeline-cases none --out "$RES" --work /root/work
    run python3 -u -m benchmarks.instacart_smollm2 run --model /root/smol --cases project-cast-lora-inputs \
        project-compiled --pipeline-cases none --out "$RES" --work /root/work
    run python3 -u -m benchmarks.label_scoring_batch --model /root/smol --batches 64 256 512 1024 --layers dense \
        --out "$RES"
    run python3 -u -m benchmarks.instacart_smollm2 profile --model /root/smol --batch 241 --out "$RES"
}

classification_head() {
    smollm2
    run python3 -u -m benchmarks.instacart_smollm2 run --model /root/smol --cases project project-head \
        --pipeline-cases none --out "$RES" --work /root/work
}

case "$PLAN" in
    packing) packing ;;
    small-model) small_model ;;
    current-code) current_code ;;
    varlen) varlen ;;
    side-by-side) side_by_side ;;
    capped) capped ;;
    head) classification_head ;;
    *) echo "unknown plan $PLAN: packing, small-model, current-code, varlen, side-by-side, capped or head"; exit 2 ;;
esac
echo "== done $(date -u +%H:%M:%S)"
