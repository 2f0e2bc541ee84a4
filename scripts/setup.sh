#!/usr/bin/env bash
# Sets up everything the project needs on a fresh machine, idempotently:
#   1. checks Python 3.11; installs Java 17, Maven, redis-server, docker-compose, mosquitto, isal (igzip) and chromium
#      (Debian packages) where they are missing and it can;
#   2. the virtual environment .venv from the pinned lock files;
#   3. the Hadoop home var/hadoop-3.5.0 from Maven Central (hadoop/pom.xml);
#   4. the Kafka broker's jars and Spark's Kafka connector (kafka/*.xml);
#   5. the encoder's ONNX export; 6. the Spark driver's class-data sharing archive.
# A second run reuses what is installed (stamp files hold the hashes of the
# inputs) and takes seconds.
# Run with: ./scripts/setup.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
hadoop_home="$root/var/hadoop-3.5.0"
torch_version="2.13.0"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# --- 1. prerequisites -------------------------------------------------------
python="${PYTHON:-$(command -v python3.11 || true)}"
[[ -n "$python" ]] || die "Python 3.11 not found (python3.11 on PATH or PYTHON=/path/to/python3.11)"
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "$python is not Python 3.11 (mrjob 0.7.4 needs 3.11: see shared/RESOURCES.md)"

# Debian packages the project runs: Java 17 and Maven (the Hadoop home, HDFS,
# YARN, Spark), redis-server (the enrich stage's shared store on a cluster, and
# its tests) and docker-compose (v1; validates docker-compose.yml offline in
# tests/cluster/test_compose.py, no Docker daemon needed). Installed here
# where we can (root with apt-get), in one apt-get run; otherwise say how.
debs=()
if [[ -z "${JAVA_HOME:-}" ]] && ! command -v java >/dev/null; then debs+=(openjdk-17-jdk-headless); fi
command -v mvn >/dev/null || debs+=(maven)
command -v redis-server >/dev/null || debs+=(redis-server)
command -v docker-compose >/dev/null || debs+=(docker-compose)
# mosquitto: the MQTT broker of the device bridge (docs/streams.md) and its tests.
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || debs+=(mosquitto)
# isal (igzip): the local clusters unpack the packed environment with it (infra/bin/gzip).
command -v igzip >/dev/null || debs+=(isal)
# chromium: the headless browser the run report's tests draw pages in (docs/service.md).
command -v chromium >/dev/null || debs+=(chromium)
if [[ ${#debs[@]} -gt 0 ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${debs[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}"; } >/dev/null \
      || die "apt-get could not install ${debs[*]}"
  else
    # Java and Maven are checked below (setup needs them); redis-server,
    # docker-compose, mosquitto and chromium only some tests: those then fail naming the command;
    # without isal the clusters unpack with the system gzip.
    say "warning: missing Debian packages ${debs[*]} (not root, or no apt-get): sudo apt-get install ${debs[*]}"
  fi
fi

if [[ -n "${JAVA_HOME:-}" ]]; then java="$JAVA_HOME/bin/java"; else java="$(command -v java || true)"; fi
[[ -n "$java" && -x "$java" ]] \
  || die "Java 17 not found (no java on PATH, JAVA_HOME unset): apt-get install openjdk-17-jdk-headless"
java_major="$("$java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
[[ -n "$java_major" && "$java_major" -ge 17 ]] \
  || die "Java 17 or newer is required; $java reports version '${java_major:-unknown}'"
command -v mvn >/dev/null || die "Maven not found (mvn): apt-get install maven"

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- 2. Python environment --------------------------------------------------
if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
req_hash="$(hash_of requirements.txt requirements-torch-cuda.txt requirements-nodeps.txt)"
if [[ "$(cat "$venv/.aibatch-requirements" 2>/dev/null)" != "$req_hash" ]]; then
  # torch: a local CPU-only build of exactly this version, where the machine's
  # pip offers one in its find-links dirs; otherwise the registry build,
  # which carries the CUDA libraries (several GB) and also runs on the CPU.
  cpu_wheel=""
  for dir in ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true); do
    for whl in "$dir"/torch-"$torch_version"+cpu-cp311-*.whl; do
      [[ -f "$whl" ]] && cpu_wheel="$whl"
    done
  done
  if [[ -n "$cpu_wheel" ]]; then
    say "installing the local CPU-only torch build $cpu_wheel"
    "${pip[@]}" install --no-deps "$cpu_wheel"
    torch_req=()
  else
    say "no local CPU-only torch $torch_version: installing the registry build (with CUDA libraries)"
    torch_req=(-r requirements-torch-cuda.txt)
  fi
  say "installing the pinned Python packages"
  "${pip[@]}" install -r requirements.txt "${torch_req[@]}"
  say "installing the data and model packages (--no-deps)"
  "${pip[@]}" install --no-deps -r requirements-nodeps.txt
  echo "$req_hash" > "$venv/.aibatch-requirements"
else
  say "Python packages up to date"
fi

# --- 3. Hadoop home ---------------------------------------------------------
hadoop_hash="$(hash_of hadoop/pom.xml hadoop/bin/hadoop conf/hadoop/* conf/hdfs.toml)"
if [[ "$(cat "$hadoop_home/.aibatch-hadoop" 2>/dev/null)" != "$hadoop_hash" ]]; then
  say "resolving Apache Hadoop jars from Maven Central into $hadoop_home"
  lib="$hadoop_home/share/hadoop/common/lib"
  tools="$hadoop_home/share/hadoop/tools/lib"
  rm -rf "$lib" "$tools"
  mkdir -p "$lib" "$tools" "$hadoop_home/bin" "$hadoop_home/etc/hadoop" "$hadoop_home/logs"
  mvn -q -B -f hadoop/pom.xml dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$lib" \
    || die "Maven could not resolve the Hadoop jars (see the error above)"
  # mrjob looks for hadoop-streaming*.jar under the Hadoop home.
  mv "$lib"/hadoop-streaming-*.jar "$tools"/
  # The NameNode/DataNode web apps (WebHDFS lives there): see hadoop/pom.xml.
  rm -rf "$hadoop_home/share/hadoop/hdfs"
  mkdir -p "$hadoop_home/share/hadoop/hdfs"
  "$venv/bin/python" - "$lib"/hadoop-hdfs-*-tests.jar "$hadoop_home/share/hadoop/hdfs" <<'PY'
import sys, zipfile
jar, dest = sys.argv[1:3]
with zipfile.ZipFile(jar) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("webapps/")])
PY
  rm -f "$lib"/hadoop-hdfs-*-tests.jar
  install -m 0755 hadoop/bin/hadoop "$hadoop_home/bin/hadoop"
  "$venv/bin/python" -m infra conf --out "$hadoop_home/etc/hadoop"
  echo "$hadoop_hash" > "$hadoop_home/.aibatch-hadoop"
else
  say "Hadoop home up to date"
fi
"$hadoop_home/bin/hadoop" version | head -1 | sed 's/^/[setup] /'

# --- 4. Kafka: the broker's jars and Spark's Kafka connector ---------------
# The broker (kafka/pom.xml) in its own lib dir, never on Spark's classpath;
# the connector (kafka/connector-pom.xml) for the Spark runtime's own version,
# which the stream job gets with --jars (docs/streams.md). A Spark whose
# connector Maven Central does not serve leaves only ./submit.sh stream without it.
kafka_home="$root/var/kafka-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' kafka/pom.xml)"
spark_version="$("$venv/bin/python" -c 'import pyspark; print(pyspark.__version__)')"
connector_dir="$root/var/spark-kafka-$spark_version"
if [[ "$(cat "$kafka_home/.aibatch-kafka" 2>/dev/null)" != "$(hash_of kafka/pom.xml)" ]]; then
  say "resolving the Apache Kafka broker's jars from Maven Central into $kafka_home"
  rm -rf "$kafka_home/libs"
  mvn -q -B -f kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$kafka_home/libs" \
    || die "Maven could not resolve the Kafka jars (see the error above)"
  hash_of kafka/pom.xml > "$kafka_home/.aibatch-kafka"
fi
if [[ "$(cat "$connector_dir/.aibatch-connector" 2>/dev/null)" != "$(hash_of kafka/connector-pom.xml)" ]]; then
  rm -rf "$connector_dir"
  if mvn -q -B -f kafka/connector-pom.xml -Dspark.version="$spark_version" dependency:copy-dependencies \
       -DincludeScope=runtime -DoutputDirectory="$connector_dir" >/dev/null 2>&1; then
    hash_of kafka/connector-pom.xml > "$connector_dir/.aibatch-connector"
    say "Spark's Kafka connector for Spark $spark_version in $connector_dir"
  else
    rm -rf "$connector_dir"
    say "warning: Maven Central serves no spark-sql-kafka-0-10_2.13 $spark_version: ./submit.sh stream needs a Spark whose connector is served (docs/streams.md)"
  fi
fi

# --- 5. the encoder for encoder.runtime = "onnxruntime" -----------------------
# Exported once from the installed weights (never downloaded), checked against
# torch, cached under var/onnx/<weights hash>/; a no-op when already there.
say "ONNX export of the encoder: $(AIBATCH_HOME="$root" "$venv/bin/python" -m udfs.onnx_runtime)"
# --- 6. the Spark driver JVM's class-data sharing archive --------------------
# Built once by a small Spark run (about 45 s), checked and kept under var/cds/;
# a second setup only checks that this JVM still accepts it (infra/cds.py).
# Without it the jobs run as before, only each starts slower.
if out="$(AIBATCH_HOME="$root" "$venv/bin/python" -m infra cds 2>&1)"; then
  say "$out"
else
  say "warning: ${out%%$'\n'*} (the jobs run without it, each starting about 6 s slower)"
fi
say "done: venv $venv, HADOOP_HOME $hadoop_home"
