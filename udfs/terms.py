"""Term statistics rules shared by the Spark stats job and its mrjob twin:
tokenisation, the ordering of top terms, and the JSON form of each output row."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")

# A fixed English stop list (function words), so the top terms say something;
# fixed here rather than taken from a library whose list may change.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it it's its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that that's the their theirs them themselves then
    there there's these they they're this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves i'm i've
    i'd i'll you're you've he's she's we're we've isn't aren't wasn't weren't don't doesn't didn't
    won't can't couldn't shouldn't wouldn't let's s t""".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, inner apostrophes) of the
    NFKC-normalised text, without stop words and one-character tokens."""
    norm = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    return [t for t in _TOKEN.findall(norm) if len(t) > 1 and t not in STOPWORDS]


def top_key(term: str, count: int) -> tuple[int, str]:
    """Sort key of top terms: count descending, then term ascending."""
    return (-count, term)


def top_terms(counts: Iterable[tuple[str, int]], k: int) -> list[tuple[str, int]]:
    return sorted(counts, key=lambda tc: top_key(tc[0], tc[1]))[:k]


def label_key(label: str | None) -> str:
    """Rows without a predicted label group under the empty string."""
    return label if label is not None else ""


# Output rows, one JSON object a line, keys in this order; the sort key of
# each table makes the files' order deterministic.
def term_freq_row(label: str, term: str, count: int) -> str:
    return json.dumps({"label": label, "term": term, "count": count}, ensure_ascii=False)


def term_freq_sort_key(label: str, term: str, count: int) -> tuple:
    return (label, term)


def counts_row(source: str, label: str, count: int) -> str:
    return json.dumps({"source": source, "label": label, "count": count}, ensure_ascii=False)


def counts_sort_key(source: str, label: str, count: int) -> tuple:
    return (source, label)


def top_terms_row(label: str, rank: int, term: str, count: int) -> str:
    return json.dumps({"label": label, "rank": rank, "term": term, "count": count}, ensure_ascii=False)


def top_terms_sort_key(label: str, rank: int, term: str, count: int) -> tuple:
    return (label, rank)


def ranked_top_terms(label: str, counts: Iterable[tuple[str, int]], k: int) -> Iterator[tuple[str, int, str, int]]:
    """(label, rank, term, count) of one label's top k terms, rank from 1."""
    for rank, (term, count) in enumerate(top_terms(counts, k), start=1):
        yield label, rank, term, count
