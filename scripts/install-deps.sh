#!/usr/bin/env bash
# Installs the Debian packages mpnet needs to build, test and run its examples.
# Runs apt-get only when something is missing; uses sudo when not root.
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config libeigen3-dev nlohmann-json3-dev doctest-dev
          libbenchmark-dev libstb-dev libzip-dev zlib1g-dev libjpeg-dev dataset-fashion-mnist
          libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
