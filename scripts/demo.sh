#!/usr/bin/env bash
# The README's main job: start HDFS, copy the default data (VADER sentiment
# sets + Rotten Tomatoes snippets, ~37.6k rows) into it, ingest it, train the
# sentiment head, score, compute the statistics, and print a short summary.
# By default train and score use the documented subset (the records whose id
# hashes below 25 %, about 9.4k rows; about 4 minutes on 2 cores); --full uses
# every row (~37.6k; about 8 minutes on 2 cores).
# Run with: ./scripts/demo.sh [--full | --sample-percent P]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[[ -x .venv/bin/python ]] || { echo "error: run ./scripts/setup.sh first" >&2; exit 1; }

sample=25
while [[ $# -gt 0 ]]; do
  case "$1" in
    --full) sample=100; shift ;;
    --sample-percent) sample="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n[demo] %s\n' "$*"; }
started=$SECONDS
logs="$root/var/demo"
mkdir -p "$logs"

say "starting HDFS"
./scripts/hdfs.sh start | sed 's/^/  /'
user="$(.venv/bin/python -c 'from infra.settings import hdfs_user; print(hdfs_user())')"
dir="/user/$user/aibatch/demo"

say "copying the default data into HDFS"
raw="$(.venv/bin/python scripts/stage_default_data.py "$dir/raw")"
echo "  $raw"
base="${raw%/raw}"

say "ingest"
./submit.sh ingest --input "$raw" --output "$base/records" --rejects "$base/rejects" --overwrite 2>"$logs/ingest.log" \
  | tee "$logs/ingest.out"

say "train (sample ${sample} %)"
./submit.sh train --input "$base/records" --sample-percent "$sample" 2>"$logs/train.log" | tee "$logs/train.out"
model="$(sed -n 's/^train: registered \([^ ]*\) .*/\1/p' "$logs/train.out")"
[[ -n "$model" ]] || { echo "error: train registered no model (see $logs/train.log)" >&2; exit 1; }

say "score with $model (sample ${sample} %)"
./submit.sh score --input "$base/records" --output "$base/scored" --overwrite --model "$model" --sample-percent "$sample" \
  2>"$logs/score.log" | tee "$logs/score.out"

say "stats"
./submit.sh stats --input "$base/scored" --output "$base/stats" --overwrite 2>"$logs/stats.log" | tee "$logs/stats.out"

say "summary"
grep '^ingest:' "$logs/ingest.out" | sed 's/^ingest: /  ingest: /'
grep 'test accuracy' "$logs/train.out" | sed "s/^ */  head $model: /"
sed -n 's/^score: \(.*\)/  score: \1/p' "$logs/score.out"
sed -n 's/^\(stats: [0-9].*\)/  \1/p' "$logs/stats.out"
echo "  outputs in HDFS: $base/{records,rejects,scored,stats}"
echo "  model registry: $root/var/models ; job logs: $logs"
echo "  total $((SECONDS - started)) s; HDFS keeps running (./scripts/hdfs.sh stop)"
