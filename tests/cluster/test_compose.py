"""docker-compose.yml, validated without Docker (no daemon runs here): a
YAML parse, then the services, images, host networking and loopback
addresses, ports, volumes, health checks and the settings the jobs read
(docker/hadoop-conf, the gateway's key), and `docker-compose config` from
Debian's docker-compose 1.29 (which parses and interpolates offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.yarn import framework_of

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE = ROOT / "docker-compose.yml"
HADOOP = {"namenode", "datanode", "resourcemanager", "nodemanager"}
SPARK = {"spark-master", "spark-worker"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _default(value: str) -> str:
    """${VAR:-default} -> default (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_services_and_images(compose):
    import pyspark

    services = compose["services"]
    assert set(services) == HADOOP | SPARK | {"gateway"}
    for name in HADOOP:
        assert re.fullmatch(r"apache/hadoop:3\.\d+\.\d+", services[name]["image"]), name
    for name in SPARK:
        # the same Spark release as the driver's pyspark, Scala 2.13, Java 17
        assert services[name]["image"] == f"apache/spark:{pyspark.__version__}-scala2.13-java17-python3-ubuntu"
    dockerfile = ROOT / services["gateway"]["build"]["dockerfile"]
    assert dockerfile.read_text().count("FROM python:3.11.7-slim-bookworm") == 1
    assert services["namenode"]["command"] == ["hdfs", "namenode"]
    assert services["nodemanager"]["command"] == ["yarn", "nodemanager"]
    assert "org.apache.spark.deploy.worker.Worker" in services["spark-worker"]["command"]


def test_everything_on_loopback(compose):
    for name, service in compose["services"].items():
        # host networking, so jobs from the host and executors reach each
        # other on 127.0.0.1; nothing is published on other interfaces
        assert service["network_mode"] == "host", name
        assert "ports" not in service, name
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if re.search(r"(address|hostname|rpc-address|defaultFS|LOCAL_IP)$", key):
                hosts = re.findall(r"(?:^|//)([\w.-]+)(?::\d+)?$", value)
                assert hosts == ["127.0.0.1"], (name, key, value)
    master = compose["services"]["spark-master"]["command"]
    assert master[master.index("--host") + 1] == "127.0.0.1"
    worker = compose["services"]["spark-worker"]["command"]
    assert worker[-1] == "spark://127.0.0.1:7077"
    gateway_toml = (ROOT / "conf" / "gateway.toml").read_text()
    assert re.search(r'^host = "127\.0\.0\.1"', gateway_toml, re.M)


def test_volumes_and_health_checks(compose):
    services = compose["services"]
    declared = set(compose["volumes"])
    used = set()
    for name, service in services.items():
        assert "test" in service["healthcheck"], name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith("$"):
                used.add(source)
    assert used == declared == {"hdfs-name", "hdfs-data", "yarn-local", "spark-work"}
    env = services["namenode"]["environment"]
    assert "hdfs-name:" + env["HDFS-SITE.XML_dfs.namenode.name.dir"] in services["namenode"]["volumes"]
    assert env["ENSURE_NAMENODE_DIR"] == env["HDFS-SITE.XML_dfs.namenode.name.dir"]
    assert "hdfs-data:" + env["HDFS-SITE.XML_dfs.datanode.data.dir"] in services["datanode"]["volumes"]


def test_executors_get_the_python_the_packed_env_needs(compose):
    """The packed environment's python3.11 needs the host venv's base Python
    at the same path: the default mount is this checkout's."""
    cfg = (ROOT / ".venv" / "pyvenv.cfg").read_text()
    home = re.search(r"^home = (.+)$", cfg, re.M).group(1).strip()
    prefix = str(Path(home).parent)
    for name in ("spark-worker", "nodemanager"):
        mounts = [_default(v) for v in compose["services"][name]["volumes"]]
        assert f"{prefix}:{prefix}:ro" in mounts, (name, mounts)


def test_settings_the_jobs_read(compose):
    env = compose["services"]["namenode"]["environment"]
    conf = ROOT / "docker" / "hadoop-conf"
    core = (conf / "core-site.xml").read_text()
    assert f"<value>{env['CORE-SITE.XML_fs.defaultFS']}</value>" in core
    yarn_site = (conf / "yarn-site.xml").read_text()
    assert f"<value>{env['YARN-SITE.XML_yarn.resourcemanager.address']}</value>" in yarn_site
    # ./submit.sh mr -r hadoop with this HADOOP_CONF_DIR goes to YARN
    assert framework_of(conf) == "yarn" and env["MAPRED-SITE.XML_mapreduce.framework.name"] == "yarn"
    # the gateway's key comes from the host's environment, never from a file
    assert compose["services"]["gateway"]["environment"]["AIBATCH_GATEWAY_KEY"].startswith("${AIBATCH_GATEWAY_KEY:?")


def test_docker_compose_config_accepts_it(tmp_path):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not installed: apt-get install docker-compose (scripts/setup.sh and .ci/run do)")
    env = {"PATH": "/usr/bin:/bin", "AIBATCH_GATEWAY_KEY": "sk-test-not-a-secret", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE), "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert set(resolved["services"]) == HADOOP | SPARK | {"gateway"}
    # without the key, compose refuses to start rather than run keyless
    env.pop("AIBATCH_GATEWAY_KEY")
    proc = subprocess.run([exe, "-f", str(COMPOSE), "config"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "set AIBATCH_GATEWAY_KEY" in proc.stderr
