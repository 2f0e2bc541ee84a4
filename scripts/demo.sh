#!/usr/bin/env bash
# The README's main job: start HDFS, copy the default data (VADER sentiment
# sets + Rotten Tomatoes snippets, ~37.6k rows) into it, ingest it, train the
# sentiment head, score, compute the statistics, enrich the negative rows of
# a 1 % sample with an LLM through the local gateway (started here, stopped
# at the end), and print a short summary.
# By default train and score use the documented subset (the records whose id
# hashes below 25 %, about 9.4k rows; about 4 minutes on 2 cores); --full uses
# every row (~37.6k; about 8 minutes on 2 cores). The gateway answers with its
# deterministic backend; --smollm2 uses the real SmolLM2-135M model instead
# (on a 0.2 % sample: it answers one request at a time, a second or two each).
# Run with: ./scripts/demo.sh [--full | --sample-percent P] [--smollm2]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[[ -x .venv/bin/python ]] || { echo "error: run ./scripts/setup.sh first" >&2; exit 1; }

sample=25
model_set=()
enrich_sample=1
llm="the deterministic backend"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --full) sample=100; shift ;;
    --sample-percent) sample="$2"; shift 2 ;;
    # The llama backend answers one request at a time: one in flight, a patient timeout.
    --smollm2) model_set=(--set enrich.provider.model=smollm2 --set enrich.provider.max_tokens=128
                          --set enrich.provider.timeout_s=120 --set enrich.limits.max_concurrency=1)
               enrich_sample=0.2; llm="SmolLM2-135M (llama.cpp)"; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

say "LLM gateway on loopback ($llm)"
# A key made up for this run; the gateway and the job read it from the environment only.
AIBATCH_GATEWAY_KEY="sk-demo-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(12))')"
export AIBATCH_GATEWAY_KEY
port="$(.venv/bin/python -c 'from infra.hdfs import free_ports; print(free_ports(1)[0])')"
.venv/bin/python -m gateway --config conf/gateway.toml --port "$port" --log-level warning >"$logs/gateway.log" 2>&1 &
gateway_pid=$!
trap 'kill "$gateway_pid" 2>/dev/null || true' EXIT
.venv/bin/python - "$port" <<'PY'
import sys, time, httpx
url = f"http://127.0.0.1:{sys.argv[1]}/health"
for _ in range(300):
    try:
        if httpx.get(url, timeout=1).status_code == 200:
            sys.exit(0)
    except httpx.TransportError:
        pass
    time.sleep(0.2)
sys.exit("the gateway did not start (see var/demo/gateway.log)")
PY
echo "  http://127.0.0.1:$port (log: $logs/gateway.log)"

say "enrich the negative rows of a ${enrich_sample} % sample with $llm"
./submit.sh enrich --input "$base/scored" --output "$base/enriched" --dead-letters "$base/enriched_dead_letters" --overwrite \
  --sample-percent "$enrich_sample" --set "enrich.provider.base_url=http://127.0.0.1:$port/v1" \
  --set enrich.select.op=in --set 'enrich.select.values=["negative"]' "${model_set[@]}" \
  2>"$logs/enrich.log" | tee "$logs/enrich.out"
kill "$gateway_pid" 2>/dev/null || true

say "summary"
grep '^ingest:' "$logs/ingest.out" | sed 's/^ingest: /  ingest: /'
# (the model is a URI such as models:/sentiment/1: no sed with it inside)
grep -m1 'test accuracy' "$logs/train.out" | sed 's/^ *//' | while IFS= read -r line; do echo "  head $model: $line"; done
sed -n 's/^score: \(.*\)/  score: \1/p' "$logs/score.out"
sed -n 's/^\(stats: [0-9].*\)/  \1/p' "$logs/stats.out"
sed -n 's/^enrich: \(.*\)/  enrich: \1/p; s/^  \(calls made.*\)/    \1/p' "$logs/enrich.out"
echo "  outputs in HDFS: $base/{records,rejects,scored,stats,enriched,enriched_dead_letters}"
echo "  model registry (MLflow store): $root/var/mlflow ; job logs: $logs"
echo "  total $((SECONDS - started)) s; HDFS keeps running (./scripts/hdfs.sh stop)"
