#!/usr/bin/env bash
# The one door to the jobs:
#   ./submit.sh [--master URL] [--env-archive URL] [--spark-conf FILE] [--config FILE] <job> [job args]
#   ./submit.sh --help            lists the jobs and their arguments
#   ./submit.sh <job> --help      one job's arguments
#   ./submit.sh pack [--upload [DIR_URL]]   packs .venv for cluster executors (cached)
#   ./submit.sh --master URL env-check      where the cluster's executors run Python from
#   ./submit.sh [--master URL] my_app.py    your own PySpark script, shipped like a job
#   ./submit.sh mqtt-bridge --from mqtt://... --to kafka://...   MQTT devices -> Kafka (no Spark)
#   ./submit.sh serve [--config conf/service.toml] [--port N]     the REST service (docs/service.md)
# Runs .venv/bin/spark-submit with conf/spark-defaults.conf, shipping the
# project code (udfs/, jobs/) as a zip for --py-files; local mode unless
# --master names a cluster (spark://HOST:PORT or yarn). On a cluster the
# executors run the packed environment (./submit.sh pack --upload), shipped
# with --archives URL#environment, so workers need only Java and Python 3.11.
# Environment: AIBATCH_CONFIG (pipeline settings file, as --config),
# PYSPARK_PYTHON (workers' Python in local mode, default .venv/bin/python),
# SPARK_LOCAL_IP (default 127.0.0.1), AIBATCH_BUILD_DIR (where the zip is
# built, default var/build), AIBATCH_ENV_ARCHIVE (the packed environment's
# URL, as --env-archive), HADOOP_CONF_DIR (the cluster's client
# configuration; default var/yarn/conf for --master yarn, var/hdfs/conf
# otherwise).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$root/.venv"
python="$venv/bin/python"

die() { printf 'submit.sh: %s\n' "$*" >&2; exit 2; }
[[ -x "$python" ]] || die "no virtual environment at $venv: run ./scripts/setup.sh first"

master=""
env_archive="${AIBATCH_ENV_ARCHIVE:-}"
spark_conf="$root/conf/spark-defaults.conf"
config="${AIBATCH_CONFIG:-$root/conf/pipeline.toml}"

usage() {
  cat <<USAGE
usage: ./submit.sh [--master URL] [--env-archive URL] [--spark-conf FILE] [--config FILE] <job> [job args]
       ./submit.sh pack [--upload [DIR_URL]] [--force]
       ./submit.sh --master URL env-check
       ./submit.sh [--master URL] my_app.py [args]

  --master URL       Spark master (default: spark.master in the Spark conf, local[*,4]);
                     spark://HOST:PORT or yarn run executors in the packed environment
  --env-archive URL  the packed environment (default \$AIBATCH_ENV_ARCHIVE, else where
                     ./submit.sh pack --upload puts it on the cluster's HDFS)
  --spark-conf FILE  Spark properties file (default conf/spark-defaults.conf)
  --config FILE      pipeline settings (default \$AIBATCH_CONFIG, else conf/pipeline.toml);
                     a job's --set KEY=VALUE overrides one key (repeatable)

USAGE
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) [[ $# -ge 2 ]] || die "--master needs a URL"; master="$2"; shift 2 ;;
    --master=*) master="${1#*=}"; shift ;;
    --env-archive) [[ $# -ge 2 ]] || die "--env-archive needs a URL"; env_archive="$2"; shift 2 ;;
    --env-archive=*) env_archive="${1#*=}"; shift ;;
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
# The driver's JVM maps the classes of Spark's jars from the class-data
# sharing archive setup builds (infra/cds.py): about 6 s less start-up per
# job. An archive of your own in SPARK_SUBMIT_OPTS wins; one that no longer
# matches the JVM or the jars is skipped silently.
cds_archive="$root/var/cds/spark-driver.jsa"
if [[ -f "$cds_archive" && "${SPARK_SUBMIT_OPTS:-}" != *SharedArchiveFile* && "${SPARK_SUBMIT_OPTS:-}" != *ArchiveClassesAtExit* && "${SPARK_SUBMIT_OPTS:-}" != *-Xshare* ]]; then
  export SPARK_SUBMIT_OPTS="${SPARK_SUBMIT_OPTS:+$SPARK_SUBMIT_OPTS }-XX:SharedArchiveFile=$cds_archive -Xlog:cds=off -Xlog:cds+dynamic=off"
fi
# Hadoop's FileUtil.unTar, which the client-mode driver uses to unpack
# spark.archives (the packed environment on a standalone cluster), runs
# `gzip -dc`: infra/bin/gzip does that with igzip where installed (infra/daemons.py).
export PATH="$root/infra/bin:$PATH"
# Offline model loading, no progress bars on stderr (see udfs/model.py).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
# spark-submit pipes the Python driver's output: tell it whether a person is
# watching: the default of the enrich commands' --progress (udfs/enrich/driver.py).
if [[ -z "${AIBATCH_PROGRESS:-}" ]]; then
  if [[ -t 2 ]]; then export AIBATCH_PROGRESS=1; else export AIBATCH_PROGRESS=0; fi
fi

build_zip() {
  local dir="${AIBATCH_BUILD_DIR:-$root/var/build}"
  PYTHONPATH="$root" "$python" -m jobs.pyfiles "$dir/aibatch-pyfiles.zip"
}

infra() { PYTHONPATH="$root" "$python" -m infra "$@"; }

# On a cluster (--master spark://... or yarn) the executors run the packed
# environment, unpacked by Spark (standalone) or YARN into each executor's
# work dir as ./environment; the driver stays on .venv. Appends to the
# spark-submit arguments in cluster_extra.
cluster_extra=()
cluster_args() {
  case "$master" in
    ""|local|local\[*) return 0 ;;
    yarn)
      export HADOOP_CONF_DIR="${HADOOP_CONF_DIR:-$root/var/yarn/conf}"
      [[ -f "$HADOOP_CONF_DIR/yarn-site.xml" ]] \
        || die "--master yarn: no yarn-site.xml in HADOOP_CONF_DIR=$HADOOP_CONF_DIR (start the local YARN with ./scripts/yarn.sh start, or set HADOOP_CONF_DIR to the cluster's client configuration)" ;;
    spark://*) export HADOOP_CONF_DIR="${HADOOP_CONF_DIR:-$root/var/hdfs/conf}" ;;
    *) die "unsupported --master '$master' (local[N], spark://HOST:PORT or yarn)" ;;
  esac
  if [[ -z "$env_archive" ]]; then
    env_archive="$(infra pack --print-url)" || die "cannot tell where the packed environment is: pass --env-archive URL"
  fi
  env_archive="${env_archive%%#*}"
  local hadoop="$root/var/hadoop-3.5.0/bin/hadoop"
  case "$env_archive" in
    hdfs://*)
      [[ -x "$hadoop" ]] || die "no Hadoop home at $root/var/hadoop-3.5.0: run ./scripts/setup.sh"
      "$hadoop" fs -test -f "$env_archive" 2>/dev/null \
        || die "the packed environment $env_archive does not exist: run ./submit.sh pack --upload (or pass --env-archive URL)" ;;
    *://*) ;;
    *) [[ -f "$env_archive" ]] \
        || die "the packed environment $env_archive does not exist: run ./submit.sh pack (or pass --env-archive URL)" ;;
  esac
  cluster_extra+=(--archives "$env_archive#environment"
                  --conf spark.pyspark.python=./environment/bin/python
                  --conf "spark.pyspark.driver.python=$python")
  local var
  for var in HF_HUB_OFFLINE TRANSFORMERS_OFFLINE TQDM_DISABLE TOKENIZERS_PARALLELISM; do
    cluster_extra+=(--conf "spark.executorEnv.$var=${!var}")
  done
  # Each scoring Python worker writes which Python it runs to its executor's
  # log once (udfs/worker_env.py).
  cluster_extra+=(--conf spark.executorEnv.AIBATCH_WORKER_PROBE=1)
  if [[ "$master" == spark://* ]]; then
    # Standalone executors fetch the archive straight from its URL: with
    # Spark's fetch cache (on by default) each host also keeps a third copy
    # of the 5 GB environment (cache + each executor's copy + unpacked).
    cluster_extra+=(--conf spark.files.useFetchCache=false)
  fi
  if [[ "$master" == yarn ]]; then
    # Spark's jars from HDFS (uploaded by pack), else each application zips
    # and uploads SPARK_HOME/jars again.
    local jars="${AIBATCH_SPARK_JARS_ARCHIVE:-$(dirname "$env_archive")/spark-jars-$("$python" -c 'import pyspark; print(pyspark.__version__)').zip}"
    if [[ "$jars" != hdfs://* ]] || "$hadoop" fs -test -f "$jars" 2>/dev/null; then
      cluster_extra+=(--conf "spark.yarn.archive=$jars")
    fi
  fi
}

# Spark's own Kafka source and sink (spark-sql-kafka-0-10) for the Spark
# runtime's version, which setup resolves from Maven Central where it is served
# (kafka/connector-pom.xml; the connector uses Spark internals, so it must match).
kafka_connector_jars() {
  local core version dir
  core="$(ls "$SPARK_HOME"/jars/spark-core_2.13-*.jar 2>/dev/null | head -1)"
  version="$(basename "${core:-unknown}" .jar)"; version="${version#spark-core_2.13-}"
  dir="$root/var/spark-kafka-$version"
  ls "$dir"/spark-sql-kafka-0-10_2.13-*.jar >/dev/null 2>&1 \
    || die "no Spark Kafka connector for Spark $version in $dir: Maven Central serves spark-sql-kafka-0-10_2.13 only for some Spark versions (docs/streams.md); run ./scripts/setup.sh with such a Spark"
  local jars=("$dir"/*.jar)
  local IFS=,
  echo "${jars[*]}"
}

run_spark() {
  local name="$1"; shift
  local main="$root/jobs/spark/$name.py" preflight=1
  if [[ "$name" == env-check ]]; then
    preflight=""
    main="$root/infra/env_check.py"
  elif [[ "$name" == *.py ]]; then
    # Your own PySpark script, run like a job: same code zip, same packed
    # environment on a cluster.
    [[ -f "$name" ]] || die "no such script $name"
    main="$(cd "$(dirname "$name")" && pwd)/$(basename "$name")"
    preflight=""
  else
    [[ "$name" =~ ^[a-z_]+$ && -f "$main" ]] && PYTHONPATH="$root" "$python" -m jobs.spark.catalog --is-job "$name" \
      || die "unknown job '$name' (./submit.sh --help lists the jobs)"
  fi
  local zip; zip="$(build_zip)"
  # The job's log: the Python driver's log and trace and Spark's own log
  # (conf/spark-log4j2.properties) both go there; stderr gets one line.
  export AIBATCH_JOB_LOG="${AIBATCH_JOB_LOG:-$root/var/log/$(basename "$name" .py)-$(date -u +%Y%m%d-%H%M%S)-$$.log}"
  mkdir -p "$(dirname "$AIBATCH_JOB_LOG")"
  # Settings, model, input and output checks in plain Python first: a usage
  # error is one line and exit status 2 without starting a JVM. (Not for
  # env-check and your own scripts, which have no such checks.)
  if [[ -n "$preflight" ]]; then
    case " $* " in
      *" -h "*|*" --help "*) ;;
      *) AIBATCH_PREFLIGHT=1 PYTHONPATH="$zip" "$python" "$main" "$@" || exit $? ;;
    esac
  fi
  local args=(--properties-file "$spark_conf" --py-files "$zip"
              --driver-java-options "-Dlog4j2.configurationFile=file:$root/conf/spark-log4j2.properties")
  [[ "$name" == stream ]] && args+=(--jars "$(kafka_connector_jars)")
  [[ -n "$master" ]] && args+=(--master "$master")
  cluster_args
  exec "$venv/bin/spark-submit" "${args[@]}" "${cluster_extra[@]}" "$main" "$@"
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
  # A pretrained classifier or embedder directory into MLflow (no Spark): docs/models.md
  register) PYTHONPATH="$root" exec "$python" -m jobs.register "$@" ;;
  # MQTT devices -> Kafka, each message acknowledged after Kafka's ack (no Spark):
  # ./submit.sh mqtt-bridge --from mqtt://USER:PASS@HOST:PORT/sensors/# --to kafka://HOST:PORT/TOPIC
  mqtt-bridge) PYTHONPATH="$root" exec "$python" -m jobs.mqtt_bridge "$@" ;;
  # The REST service (models, scoring, runs; loopback): ./submit.sh serve [--config FILE] [--port N]
  serve) PYTHONPATH="$root" exec "$python" -m service "$@" ;;
  # The packed executor environment: ./submit.sh pack [--upload [DIR_URL]] [--force]
  pack) infra pack "$@"; exit ;;
  *) run_spark "$job" "$@" ;;
esac
