#!/usr/bin/env bash
# The GPU check: every CUDA test, a short training run with a resume and a sampling run on
# the GPU compared with the CPU, and the GPU benchmarks against PyTorch on the same card,
# ending with one summary. Sized to finish within 8 minutes of GPU time.
#
#   scripts/gpu-check.sh              build (needs nvcc and the build dependencies), then run
#   scripts/gpu-check.sh build [DIR]  build the GPU programs into DIR (default build/gpu) with
#                                     portable CPU flags, and bundle the runtime libraries a
#                                     bare CUDA machine may lack into DIR/runtime
#   scripts/gpu-check.sh run [DIR]    run the checks with the programs in DIR (a build made
#                                     elsewhere and carried here works: CUDA 13 driver needed)
#
# Logs go to $MPNET_GPU_CHECK_OUT (default DIR/gpu-check). Exit status 0 only when every
# stage passed. Stages: tests, train (+resume), sample (GPU vs CPU), bench (mpnet and PyTorch).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-all}
dir=${2:-build/gpu}
gpu_targets=(mpnet_cuda_tests bench_cuda_layers mpnet-train mpnet-generate)

build() {
    # -march=x86-64-v3: the GPU machine's processor need not have this one's AVX-512.
    # One real architecture (the card's, when nvidia-smi can say) keeps the build short.
    local arch="90-real;90-virtual"
    if command -v nvidia-smi >/dev/null && cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1) && [ -n "$cc" ]; then
        arch="${cc/./}-real;${cc/./}-virtual"
    fi
    cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMPNET_CUDA=ON -DMPNET_MPI=OFF \
          -DMPNET_ARCH_FLAGS=-march=x86-64-v3 "-DMPNET_CUDA_ARCHITECTURES=${MPNET_CUDA_ARCHITECTURES:-$arch}" || return 1
    cmake --build "$dir" -j "$(nproc)" --target "${gpu_targets[@]}" || return 1
    # Libraries of this machine's distribution that a CUDA image may not carry (cuBLAS and the
    # CUDA runtime come from the GPU machine's own toolkit).
    mkdir -p "$dir/runtime"
    for bin in "$dir/tests/cuda/mpnet_cuda_tests" "$dir/bench/cuda/bench_cuda_layers" "$dir/examples/mpnet-train" \
               "$dir/examples/mpnet-generate"; do
        ldd "$bin" | awk '/=> \//{print $3}' | grep -v -E '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+)\.so|cuda|cublas' |
            xargs -r -I{} cp -L {} "$dir/runtime/"
    done
    echo "built: $(du -sh "$dir/runtime" | cut -f1) of bundled libraries in $dir/runtime"
}

declare -A result
stage() {  # stage NAME TIMEOUT_S COMMAND...: runs COMMAND with a time limit, logging to NAME.log
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
        timeout --kill-after=10 "$limit" bash -c "$(declare -f); $*" 2>&1 | tee "$out/$name.log"
    else
        timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    fi
    local rc=${PIPESTATUS[0]}
    local status=PASS
    [ "$rc" = 0 ] || status="FAIL (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))"
    result[$name]="$status in $((SECONDS - t0)) s"
    echo "== $name: ${result[$name]}"
}

# 1024 PNGs of 32x32 grey bars in 4 classes with dataset.json labels (Python with NumPy and Pillow).
make_dataset() {
    "$python" - "$1" <<'PY'
import json, os, sys
import numpy as np
from PIL import Image
root = sys.argv[1]
os.makedirs(root, exist_ok=True)
rng = np.random.default_rng(0)
labels = []
for i in range(1024):
    c = i % 4
    img = np.zeros((32, 32), np.uint8)
    for _ in range(1 + c):
        y, x = rng.integers(0, 28, 2)
        img[y:y + 4, x:] = 255 if c % 2 == 0 else 128
    name = f"img{i:05d}.png"
    Image.fromarray(img.T if c >= 2 else img).save(os.path.join(root, name))
    labels.append([name, c])
json.dump({"labels": labels}, open(os.path.join(root, "dataset.json"), "w"))
PY
}

# 48 steps of fmnist-s on the GPU in one go, and as 32 steps plus a resumed 16: the resumed
# run must reach the same weights; then the steps as CUDA graphs (train_graphs).
train_resume() {
    local train=("$dir/examples/mpnet-train" --preset fmnist-s --data "$out/bars" --device "$device" --batch 64
                 --status 1024 --snapshot 1024 --checkpoint 1024)
    rm -rf "$out/train-once" "$out/train-resumed"
    make_dataset "$out/bars" &&
        "${train[@]}" --outdir "$out/train-once" --duration 3072 &&
        "${train[@]}" --outdir "$out/train-resumed" --duration 2048 &&
        "${train[@]}" --outdir "$out/train-resumed" --duration 3072 | tee "$out/resume.log" &&
        grep -q "resuming from" "$out/resume.log" &&
        "$python" "$root/scripts/compare_tensors.py" --tolerance 0 \
            "$out/train-resumed/network-snapshot-0000003-0.100.safetensors" \
            "$out/train-once/network-snapshot-0000003-0.100.safetensors" &&
        train_graphs "${train[@]}"
}

# On the GPU, the same 48 steps with every part of a step a replayed CUDA graph (--cuda-graphs): the
# plain run's weights, to 1e-6 of the largest value (cuBLAS may pick other kernels when captured).
train_graphs() {
    [ "$device" = cuda ] || return 0
    rm -rf "$out/train-graphs"
    "$@" --outdir "$out/train-graphs" --duration 3072 --cuda-graphs true | tee "$out/graphs.log" &&
        "$python" "$root/scripts/compare_tensors.py" --tolerance 1e-6 \
            "$out/train-graphs/network-snapshot-0000003-0.100.safetensors" \
            "$out/train-once/network-snapshot-0000003-0.100.safetensors"
}

# The same seeds sampled with churn by the trained network on the GPU and on the CPU; then 16
# of them with fp16 activations on both (native 16-bit kernels on the GPU, the generic ones
# on the CPU), to 20 units of fp16's roundoff.
sample_compare() {
    local gen=("$dir/examples/mpnet-generate" --net "$out/train-once/network-snapshot-0000003-0.100.safetensors"
               --steps 16 --S-churn 10 --quiet)
    "${gen[@]}" --seeds 0-63 --device "$device" --out-tensor "$out/sample-gpu.safetensors" &&
        "${gen[@]}" --seeds 0-63 --device cpu --out-tensor "$out/sample-cpu.safetensors" &&
        "$python" "$root/scripts/compare_tensors.py" --tolerance 1e-3 "$out/sample-gpu.safetensors" \
            "$out/sample-cpu.safetensors" &&
        "${gen[@]}" --seeds 0-15 --precision fp16 --device "$device" --out-tensor "$out/sample-gpu-fp16.safetensors" &&
        "${gen[@]}" --seeds 0-15 --precision fp16 --device cpu --out-tensor "$out/sample-cpu-fp16.safetensors" &&
        "$python" "$root/scripts/compare_tensors.py" --tolerance 1e-2 "$out/sample-gpu-fp16.safetensors" \
            "$out/sample-cpu-fp16.safetensors"
}

run() {
    # MPNET_GPU_CHECK_DEVICE=cpu runs the train and sample stages on the CPU (to try the script).
    export device=${MPNET_GPU_CHECK_DEVICE:-cuda}
    export root dir python=${PYTHON:-python3} out=${MPNET_GPU_CHECK_OUT:-$dir/gpu-check}
    mkdir -p "$out"
    [ -d "$dir/runtime" ] && export LD_LIBRARY_PATH="$root/$dir/runtime:${LD_LIBRARY_PATH:-}"
    # cuBLAS and the CUDA runtime from the machine's toolkit when the loader does not know them.
    if ! ldconfig -p 2>/dev/null | grep -q libcublas.so.13; then
        local lib
        lib=$(ls /usr/local/cuda/lib64/libcublas.so.13 /usr/local/cuda/targets/x86_64-linux/lib/libcublas.so.13 2>/dev/null |
              head -1)
        [ -n "$lib" ] || lib=$(find / -name libcublas.so.13 -not -path '/proc/*' 2>/dev/null | head -1)
        [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib"):$LD_LIBRARY_PATH"
    fi
    if ldd "$dir/tests/cuda/mpnet_cuda_tests" | grep 'not found'; then
        echo "missing libraries (above): LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    fi
    export MPNET_TEST_DATA="$root/tests/data"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/device.txt"

    local stages=" ${MPNET_GPU_CHECK_STAGES:-tests train sample bench} "
    [[ $stages == *" tests "* ]] && stage tests 200 "$dir/tests/cuda/mpnet_cuda_tests" --duration=true
    # compute-sanitizer's memcheck over the kernel tests (where the machine's runtime allows it)
    [[ $stages == *" memcheck "* ]] && stage memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 9 \
        "$dir/tests/cuda/mpnet_cuda_tests" --test-case='cuda kernels*'
    [[ $stages == *" train "* ]] && stage train 180 train_resume
    [[ $stages == *" sample "* ]] && stage sample 90 sample_compare
    # Optional: every layer at the edm2-img64-xs shapes, fp32 (PyTorch runs fp32 without TF32).
    [[ $stages == *" layers "* ]] && stage layers 200 "$python" bench/compare.py --build "$dir" --backend cuda \
        --python "$python" --preset edm2-img64-xs --filter "${MPNET_GPU_LAYERS_FILTER:-^(?!network/)(?!.*/(fp16|bf16)\$)}" --repetitions 2 --min-time 0.1
    [[ $stages == *" bench "* ]] && stage bench 150 "$python" bench/compare.py --build "$dir" --backend cuda --python "$python" --preset all \
        --filter "${MPNET_GPU_BENCH_FILTER:-^network/}" --repetitions 3 --min-time 0.2

    echo
    echo "== GPU check summary ($(head -2 "$out/device.txt" | tail -1))"
    local failed=0
    for name in $stages; do
        printf '  %-7s %s\n' "$name" "${result[$name]:-not run}"
        [[ "${result[$name]:-}" == PASS* ]] || failed=1
    done
    return $failed
}

case $mode in
    build) build ;;
    run) run ;;
    all) build && run ;;
    *) echo "usage: $0 [build|run|all] [BUILD_DIR]" >&2; exit 2 ;;
esac
