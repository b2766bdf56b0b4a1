#!/usr/bin/env bash
# The main job: installs what is missing, builds in Release, trains the Fashion-MNIST
# preset for a short fixed budget, reconstructs a post-hoc EMA and samples a class grid.
#   MPNET_DEMO_IMAGES  training length in images (default 64000: about 3 minutes on 2 cores)
#   MPNET_DEMO_OUT     run directory (default out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
images=${MPNET_DEMO_IMAGES:-64000}
out=${MPNET_DEMO_OUT:-out/demo}

cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build/release -j "$(nproc)" --target mpnet-train mpnet-phema mpnet-generate mpnet-convert
bin=build/release/examples

"$bin"/mpnet-train --outdir "$out/run" --data fashion-mnist --preset fmnist-xs --batch 64 \
    --duration "$images" --status 3200 --snapshot 2560 --checkpoint 12800 --lr 0.02 --rampup 1000
kimg=$(ls "$out/run" | sed -n 's/^network-snapshot-\([0-9]\{7\}\)-.*/\1/p' | sort | tail -n 1)
"$bin"/mpnet-phema --indir "$out/run" --out-std 0.070 --out-kimg "$((10#$kimg))" --outdir "$out/phema"
net=$(ls "$out"/phema/*.safetensors | tail -n 1)
"$bin"/mpnet-generate --net "$net" --seeds 0-99 --steps 32 --batch 50 --grid "$out/grid.png"
echo
echo "trained network:  $net"
echo "loss curve:       $out/run/loss.svg"
echo "sample grid:      $out/grid.png"
