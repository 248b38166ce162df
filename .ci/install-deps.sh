#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build snnc: LLVM/MLIR 22 (melior links MLIR
# statically) and the C libraries it needs. Idempotent: does nothing when everything is there.
set -euo pipefail

packages=(libmlir-22-dev mlir-22-tools llvm-22-dev libclang-22-dev clang-22 libpolly-22-dev
          libzstd-dev libz3-dev libxml2-dev zlib1g-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sudo_cmd=()
    [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust (stable >= 1.95) with rustup first" >&2
    exit 1
fi
