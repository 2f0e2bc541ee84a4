"""Copy the default data (the package files named in conf/pipeline.toml) into
a directory in HDFS through WebHDFS, where the ingest job reads them. Prints
the hdfs:// URL of that directory.

Run with: .venv/bin/python scripts/stage_default_data.py /user/$USER/aibatch/demo/raw [--config conf/pipeline.toml]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.settings import hdfs_user, load_settings  # noqa: E402
from scripts.datasets import package_file  # noqa: E402
from udfs.config import load_config  # noqa: E402

log = logging.getLogger(__name__)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", help="HDFS directory (absolute path, no scheme)")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "conf" / "pipeline.toml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from hdfs import InsecureClient

    hdfs = load_settings()
    client = InsecureClient(hdfs.webhdfs_url, user=hdfs_user())
    client.makedirs(args.dest)
    for source in load_config(args.config).ingest.sources:
        if not source.package_file:
            continue
        local = package_file(source.package_file)
        client.upload(f"{args.dest.rstrip('/')}/{source.file}", str(local), overwrite=True)
    print(f"{hdfs.hdfs_url}{args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
