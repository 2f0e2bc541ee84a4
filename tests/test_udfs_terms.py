"""Term-statistics rules shared by both engines (udfs/terms.py)."""

import json

from udfs import terms


def test_tokenize_lowercases_drops_stopwords_and_short_tokens():
    assert terms.tokenize("The FILM's plot was 2 good, isn’t it? A 10/10 film!") == [
        "film's",
        "plot",
        "good",
        "10",
        "10",
        "film",
    ]  # isn't: a stop word


def test_top_terms_orders_by_count_then_term():
    counts = [("b", 2), ("a", 2), ("c", 5), ("d", 1)]
    assert terms.top_terms(counts, 3) == [("c", 5), ("a", 2), ("b", 2)]
    assert list(terms.ranked_top_terms("positive", counts, 2)) == [("positive", 1, "c", 5), ("positive", 2, "a", 2)]


def test_rows_are_json_objects_with_fixed_keys():
    assert json.loads(terms.term_freq_row("negative", "dull", 3)) == {"label": "negative", "term": "dull", "count": 3}
    assert terms.counts_row("s", "", 1) == '{"source": "s", "label": "", "count": 1}'
    assert terms.top_terms_row("positive", 1, "fun", 9) == '{"label": "positive", "rank": 1, "term": "fun", "count": 9}'
    assert terms.label_key(None) == ""
