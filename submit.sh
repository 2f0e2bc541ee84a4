#!/usr/bin/env bash
# The one door to the jobs:
#   ./submit.sh [--master URL] [--spark-conf FILE] [--config FILE] <job> [job args]
#   ./submit.sh --help            lists the jobs and their arguments
#   ./submit.sh <job> --help      one job's arguments
# Runs .venv/bin/spark-submit with conf/spark-defaults.conf, shipping the
# project code (udfs/, jobs/) as a zip for --py-files; local mode unless
# --master names a cluster whose workers have the project's Python
# environment at the same path (or PYSPARK_PYTHON names theirs).
# Environment: AIBATCH_CONFIG (pipeline settings file, as --config), PYSPARK_PYTHON (workers' Python, default .venv/bin/python),
# SPARK_LOCAL_IP (default 127.0.0.1), AIBATCH_BUILD_DIR (where the zip is
# built, default var/build).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$root/.venv"
python="$venv/bin/python"

die() { printf 'submit.sh: %s\n' "$*" >&2; exit 2; }
[[ -x "$python" ]] || die "no virtual environment at $venv: run ./scripts/setup.sh first"

master=""
spark_conf="$root/conf/spark-defaults.conf"
config="${AIBATCH_CONFIG:-$root/conf/pipeline.toml}"

usage() {
  cat <<USAGE
usage: ./submit.sh [--master URL] [--spark-conf FILE] [--config FILE] <job> [job args]

  --master URL       Spark master (default: spark.master in the Spark conf, local[*,4])
  --spark-conf FILE  Spark properties file (default conf/spark-defaults.conf)
  --config FILE      pipeline settings (default \$AIBATCH_CONFIG, else conf/pipeline.toml);
                     a job's --set KEY=VALUE overrides one key (repeatable)

USAGE
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) [[ $# -ge 2 ]] || die "--master needs a URL"; master="$2"; shift 2 ;;
    --master=*) master="${1#*=}"; shift ;;
    --spark-conf) [[ $# -ge 2 ]] || die "--spark-conf needs a file"; spark_conf="$2"; shift 2 ;;
    --spark-conf=*) spark_conf="${1#*=}"; shift ;;
    --config) [[ $# -ge 2 ]] || die "--config needs a file"; config="$2"; shift 2 ;;
    --config=*) config="${1#*=}"; shift ;;
    -h|--help|help) job="help"; shift; break ;;
    -*) die "unknown option $1 (see ./submit.sh --help)" ;;
    *) break ;;
  esac
done
job="${job:-${1:-}}"
[[ "$job" == "help" || $# -eq 0 ]] || shift
[[ -n "$job" ]] || { usage >&2; die "name a job (./submit.sh --help lists them)"; }
[[ -f "$spark_conf" ]] || die "no Spark properties file $spark_conf"
[[ -f "$config" ]] || die "no pipeline settings file $config"
spark_conf="$(cd "$(dirname "$spark_conf")" && pwd)/$(basename "$spark_conf")"
config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"

# The jobs import only the code shipped in the zip, never the checkout.
unset PYTHONPATH
export AIBATCH_HOME="$root" AIBATCH_CONFIG="$config"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$python}"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export SPARK_HOME="${SPARK_HOME:-$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}"
# Offline model loading, no progress bars on stderr (see udfs/model.py).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
# spark-submit pipes the Python driver's output: tell it whether a person is
# watching, for the enrich job's progress bar (udfs/enrich_run.py).
if [[ -z "${AIBATCH_PROGRESS:-}" ]]; then
  if [[ -t 2 ]]; then export AIBATCH_PROGRESS=1; else export AIBATCH_PROGRESS=0; fi
fi

build_zip() {
  local dir="${AIBATCH_BUILD_DIR:-$root/var/build}"
  PYTHONPATH="$root" "$python" -m jobs.pyfiles "$dir/aibatch-pyfiles.zip"
}

run_spark() {
  local name="$1"; shift
  local main="$root/jobs/spark/$name.py"
  [[ "$name" =~ ^[a-z_]+$ && -f "$main" ]] && PYTHONPATH="$root" "$python" -m jobs.spark.catalog --is-job "$name" \
    || die "unknown job '$name' (./submit.sh --help lists the jobs)"
  local zip; zip="$(build_zip)"
  # The job's log: the Python driver's log and trace and Spark's own log
  # (conf/spark-log4j2.properties) both go there; stderr gets one line.
  export AIBATCH_JOB_LOG="${AIBATCH_JOB_LOG:-$root/var/log/$name-$(date -u +%Y%m%d-%H%M%S)-$$.log}"
  mkdir -p "$(dirname "$AIBATCH_JOB_LOG")"
  # Settings, model, input and output checks in plain Python first: a usage
  # error is one line and exit status 2 without starting a JVM.
  case " $* " in
    *" -h "*|*" --help "*) ;;
    *) AIBATCH_PREFLIGHT=1 PYTHONPATH="$zip" "$python" "$main" "$@" || exit $? ;;
  esac
  local args=(--properties-file "$spark_conf" --py-files "$zip"
              --driver-java-options "-Dlog4j2.configurationFile=file:$root/conf/spark-log4j2.properties")
  [[ -n "$master" ]] && args+=(--master "$master")
  exec "$venv/bin/spark-submit" "${args[@]}" "$main" "$@"
}

show_help() {
  usage
  local zip; zip="$(build_zip)"
  PYTHONPATH="$zip" "$python" -m jobs.spark.catalog "$@"
}

# Dispatch: one case per engine. Spark jobs are the default; another engine
# (the mrjob twins: ./submit.sh mr <job> ...) gets its own case here.
case "$job" in
  help) show_help "$@" ;;
  # The mrjob twins: ./submit.sh mr ingest|score|stats -r inline|local|hadoop ...
  mr) PYTHONPATH="$root" exec "$python" -m jobs.mapreduce.launch "$@" ;;
  *) run_spark "$job" "$@" ;;
esac
