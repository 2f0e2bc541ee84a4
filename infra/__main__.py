"""Command line for the local HDFS:

    python -m infra hdfs start|stop|status|restart [--config conf/hdfs.toml]
    python -m infra conf --out DIR [--config conf/hdfs.toml]

scripts/hdfs.sh runs this with the project's virtual environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .hadoop_home import render_conf_dir
from .hdfs import HdfsError, LocalHDFS
from .settings import SettingsError, hdfs_user, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra")
    sub = parser.add_subparsers(dest="service", required=True)
    hdfs = sub.add_parser("hdfs", help="single-node HDFS on loopback")
    hdfs.add_argument("action", choices=["start", "stop", "status", "restart"])
    hdfs.add_argument("--config", help="HDFS settings file (default conf/hdfs.toml)")
    conf = sub.add_parser("conf", help="write the Hadoop site files for these settings")
    conf.add_argument("--out", required=True, help="config dir to write")
    conf.add_argument("--config", help="HDFS settings file (default conf/hdfs.toml)")
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


if __name__ == "__main__":
    sys.exit(main())
