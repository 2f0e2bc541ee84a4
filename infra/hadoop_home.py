"""Render a Hadoop config dir from the templates in conf/hadoop/."""

from __future__ import annotations

import shutil
import string
from pathlib import Path

from .settings import REPO_ROOT, HdfsSettings

TEMPLATE_DIR = REPO_ROOT / "conf" / "hadoop"


def render_conf_dir(settings: HdfsSettings, conf_dir: Path, user: str) -> Path:
    """Write core-site, hdfs-site and mapred-site (and log4j.properties)
    for these settings into conf_dir; returns conf_dir."""
    conf_dir = Path(conf_dir)
    conf_dir.mkdir(parents=True, exist_ok=True)
    values = {
        "host": settings.host,
        "data_dir": str(Path(settings.data_dir).resolve()),
        "user": user,
        "local_map_tasks": str(settings.local_map_tasks),
        **{k: str(v) for k, v in settings.ports().items()},
    }
    for template in sorted(TEMPLATE_DIR.glob("*.template")):
        text = string.Template(template.read_text()).substitute(values)
        (conf_dir / template.name.removesuffix(".template")).write_text(text)
    shutil.copy(TEMPLATE_DIR / "log4j.properties", conf_dir / "log4j.properties")
    return conf_dir
