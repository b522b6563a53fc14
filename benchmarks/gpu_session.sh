#!/usr/bin/env bash
# One GPU session's benchmarks, in sequence, from the repository root on the GPU machine (benchmarks/README.md, "H200"):
#   setsid nohup bash benchmarks/gpu_session.sh /root/res > /root/res.log 2>&1 &
# It outlasts one 10-minute call, so it runs in the background on the held machine. Each case writes its JSON as it
# goes; a failing command is reported and the next one runs. The SmolLM2 case waits for its GGUF, which travels in
# two parts (/root/gguf.part-*, then /root/gguf.ready): it is larger than what one call carries.
set -u
RES=${1:-/root/res}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1
run() { echo "== $(date -u +%H:%M:%S) $*"; "$@" || echo "!! exit $?: $*"; }

run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart full512 \
    --paths seeds project project-low-memory --packing-check --out "$RES"
while [ ! -f /root/gguf.ready ]; do sleep 5; done
cat /root/gguf.part-* > /root/SmolLM2-135M-Instruct.Q4_1.gguf
run python3 -m benchmarks.instacart_smollm2 export /root/SmolLM2-135M-Instruct.Q4_1.gguf /root/smol
run python3 -u -m benchmarks.instacart_smollm2 run --model /root/smol --cases project project-compiled \
    --pipeline-cases none --out "$RES" --work /root/work
run python3 -m benchmarks.qlora_throughput run --models falcon-7b --workloads instacart full512 \
    --paths seeds project --packing-check --out "$RES"
run python3 -m benchmarks.qlora_throughput run --models llama-7b --workloads instacart dialogue --paths project-padded project \
    --out "$RES"
echo "== done $(date -u +%H:%M:%S)"
