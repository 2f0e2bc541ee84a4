"""Several tasks opening the same new SQLite store at once: switching a new
file to WAL can get SQLITE_BUSY without SQLite calling its busy handler
(seen in a full test run: 'database is locked' from PRAGMA journal_mode),
so the store retries it; every opener must get a working store."""

from __future__ import annotations

import threading

from udfs.enrich.store_sqlite import SqliteStore

OPENERS = 8
FILES = 25


def test_concurrent_opens_of_a_new_store(tmp_path):
    errors: list[BaseException] = []
    for n in range(FILES):
        path = tmp_path / f"store{n}.sqlite"
        barrier = threading.Barrier(OPENERS)

        def open_it(path=path, barrier=barrier) -> None:
            barrier.wait()
            try:
                store = SqliteStore(path)
                store.close()
            except BaseException as exc:  # noqa: BLE001 (collected for the assertion)
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(OPENERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
