"""Command line for the local HDFS, YARN, Spark standalone cluster and the
packed executor environment:

    python -m infra hdfs start|stop|status|restart [--config conf/hdfs.toml]
    python -m infra yarn start|stop|status|restart [--config conf/cluster.toml]
    python -m infra spark start|stop|status|restart [--config conf/cluster.toml]
    python -m infra kafka start|stop|status|restart [--data-dir var/kafka] [--port 19092]
    python -m infra mosquitto start|stop|status [--data-dir var/mosquitto] [--port 1883]
    python -m infra pack [--upload [DIR_URL]] [--print-url] [--force]
    python -m infra cds [--force]
    python -m infra conf --out DIR [--config conf/hdfs.toml]

scripts/hdfs.sh, scripts/yarn.sh, scripts/cluster.sh, scripts/kafka.sh and ./submit.sh pack
run this with the project's virtual environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .cds import main as cds_main
from .daemons import ClusterError
from .hadoop_home import render_conf_dir
from .hdfs import HdfsError, LocalHDFS
from .pack import PackError
from .pack import main as pack_main
from .settings import REPO_ROOT, SettingsError, hdfs_user, load_cluster_settings, load_settings
from .standalone import SparkStandalone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra")
    sub = parser.add_subparsers(dest="service", required=True)
    hdfs = sub.add_parser("hdfs", help="single-node HDFS on loopback")
    hdfs.add_argument("action", choices=["start", "stop", "status", "restart"])
    hdfs.add_argument("--config", help="HDFS settings file (default conf/hdfs.toml)")
    conf = sub.add_parser("conf", help="write the Hadoop site files for these settings")
    conf.add_argument("--out", required=True, help="config dir to write")
    conf.add_argument("--config", help="HDFS settings file (default conf/hdfs.toml)")
    for name, what in (("yarn", "single-node YARN on loopback"), ("spark", "Spark standalone cluster on loopback")):
        p = sub.add_parser(name, help=what)
        p.add_argument("action", choices=["start", "stop", "status", "restart"])
        p.add_argument("--config", help="cluster settings file (default conf/cluster.toml)")
        p.add_argument("--hdfs-config", help="HDFS settings file (default conf/hdfs.toml)")
    kafka = sub.add_parser("kafka", help="single-node Kafka broker (KRaft) on loopback")
    kafka.add_argument("action", choices=["start", "stop", "status", "restart"])
    kafka.add_argument("--data-dir", help="instance dir (default var/kafka; kept across restarts)")
    kafka.add_argument("--port", type=int, help="broker port (default 19092; the controller takes the next)")
    mqtt = sub.add_parser("mosquitto", help="Mosquitto MQTT broker on loopback (password file, persistence)")
    mqtt.add_argument("action", choices=["start", "stop", "status"])
    mqtt.add_argument("--data-dir", default="var/mosquitto", help="instance dir (kept across restarts)")
    mqtt.add_argument("--port", type=int, default=1883, help="listener port on 127.0.0.1 (default 1883)")
    pack = sub.add_parser("pack", help="pack the virtual environment for executors (venv-pack, cached)")
    pack.add_argument(
        "--upload",
        nargs="?",
        const="",
        metavar="DIR_URL",
        help="also put it on HDFS, in DIR_URL (default <fs.defaultFS>/user/<user>/aibatch/env)",
    )
    pack.add_argument("--print-url", action="store_true", help="print where --upload puts it, do nothing")
    pack.add_argument("--force", action="store_true", help="pack again even when cached")
    cds = sub.add_parser("cds", help="the Spark driver JVM's class-data sharing archive (var/cds)")
    cds.add_argument("--force", action="store_true", help="build again even if a usable archive is there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("hdfs").setLevel(logging.WARNING)

    if args.service == "conf":
        try:
            settings = load_settings(args.config)
        except SettingsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        render_conf_dir(settings, Path(args.out), hdfs_user())
        return 0

    if args.service == "pack":
        try:
            return pack_main(args, print)
        except PackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.service == "cds":
        return cds_main(args.force, print)
    if args.service in ("yarn", "spark", "kafka"):
        return cluster_main(args)
    if args.service == "mosquitto":
        return mosquitto_main(args)

    try:
        node = LocalHDFS(load_settings(args.config))
        if args.action in ("stop", "restart"):
            print("HDFS stopped" if node.stop() else "HDFS was not running")
        if args.action in ("start", "restart"):
            started = node.start()
            print("HDFS started" if started else "HDFS already running (nothing done)")
            print(node.describe())
        if args.action == "status":
            state = node.status()
            print(f"HDFS {state}")
            print(node.describe())
            return 0 if state == "running" else 3
    except (HdfsError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def mosquitto_main(args) -> int:
    """start|stop|status of a background Mosquitto; start prints its URL with
    where the generated password is kept (never the password itself)."""
    from .mosquitto import LocalMosquitto, MosquittoError

    data_dir = Path(args.data_dir)
    if not data_dir.is_absolute():
        data_dir = REPO_ROOT / data_dir
    broker = LocalMosquitto(data_dir, port=args.port)
    try:
        if args.action == "start":
            started = broker.start_background()
            print("mosquitto started" if started else "mosquitto already running (nothing done)")
            print(f"mqtt://{broker.user}:<password in {data_dir / 'password.txt'}>@127.0.0.1:{broker.port}")
        elif args.action == "stop":
            print("mosquitto stopped" if broker.stop_background() else "mosquitto was not running")
        else:
            pid = broker.running_pid()
            print(f"mosquitto {'running (pid ' + str(pid) + ')' if pid else 'stopped'}")
            return 0 if pid else 3
    except MosquittoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cluster_main(args) -> int:
    """start|stop|status|restart of the YARN, the Spark standalone cluster or
    the Kafka broker (each has start, stop, status and describe)."""
    try:
        if args.service == "kafka":
            from .kafka import DEFAULT_DATA_DIR, DEFAULT_PORT, LocalKafka

            port = args.port or DEFAULT_PORT
            node: Any = LocalKafka(Path(args.data_dir or DEFAULT_DATA_DIR), port=port, controller_port=port + 1)
            label = "Kafka broker"
        elif args.service == "yarn":
            settings = load_cluster_settings(args.config)
            from .yarn import LocalYARN

            node = LocalYARN(settings, load_settings(args.hdfs_config))
            label = "YARN"
        else:
            node = SparkStandalone(load_cluster_settings(args.config))
            label = "Spark standalone cluster"
        if args.action in ("stop", "restart"):
            print(f"{label} stopped" if node.stop() else f"{label} was not running")
        if args.action in ("start", "restart"):
            started = node.start()
            print(f"{label} started" if started else f"{label} already running (nothing done)")
            print(node.describe())
        if args.action == "status":
            state = node.status()
            print(f"{label} {state}")
            print(node.describe())
            return 0 if state == "running" else 3
    except (ClusterError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
