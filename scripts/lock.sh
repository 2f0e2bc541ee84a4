#!/usr/bin/env bash
# Re-resolves requirements.in into the lock files requirements.txt and
# requirements-torch-cuda.txt, in a throwaway venv.
# Run with: ./scripts/lock.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q -r "$root/requirements.in"
"$tmp/venv/bin/pip" freeze > "$tmp/freeze.txt"
cuda='^(nvidia|cuda|triton|torch)'
{
  echo "# Full lock of requirements.in without torch and its CUDA libraries"
  echo "# (those are in requirements-torch-cuda.txt). Regenerate with scripts/lock.sh."
  grep -viE "$cuda" "$tmp/freeze.txt"
} > "$root/requirements.txt"
{
  echo "# torch 2.13.0 as the registry ships it, with the CUDA libraries it requires"
  echo "# (it runs on the CPU too). scripts/setup.sh skips this file when the"
  echo "# machine's pip offers a local CPU-only torch==2.13.0+cpu wheel."
  grep -iE "$cuda" "$tmp/freeze.txt"
} > "$root/requirements-torch-cuda.txt"
