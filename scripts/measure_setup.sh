#!/usr/bin/env bash
# Measures a cold and a warm setup: clones the repo into a temp dir and runs
# scripts/setup.sh there with no pip cache and an empty Maven repository,
# then once more (warm), and prints times and sizes.
# Run with: ./scripts/measure_setup.sh   (downloads about 4 GB; ~6 GB of disk)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
git clone -q "$root" "$tmp/repo"
cd "$tmp/repo"
export PIP_NO_CACHE_DIR=1 MAVEN_OPTS="-Dmaven.repo.local=$tmp/m2"
t0=$(date +%s.%N); ./scripts/setup.sh > "$tmp/cold.log" 2>&1; t1=$(date +%s.%N)
./scripts/setup.sh > "$tmp/warm.log" 2>&1; t2=$(date +%s.%N)
site=.venv/lib/python3.11/site-packages
printf 'cold setup: %.0f s\nwarm setup: %.1f s\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)"
printf '.venv: %s (torch + CUDA libraries: %s)\nHadoop home: %s\nMaven downloads: %s\n' \
  "$(du -sh .venv | cut -f1)" \
  "$(du -shc $site/torch $site/nvidia $site/triton $site/cuda* 2>/dev/null | tail -1 | cut -f1)" \
  "$(du -sh var/hadoop-3.5.0 | cut -f1)" "$(du -sh "$tmp/m2" | cut -f1)"
