"""Batch runs: each one a child process in its own session (so its whole
process group can be ended), recorded in SQLite so that a restarted service
loses none. A run still going when the service starts again is found again
(its process group, checked by the leader's start time so a reused pid is
not mistaken for it) and watched to its end; one that ended meanwhile gets
its outcome from the result file the job writes ($AIBATCH_RESULT_FILE,
jobs.spark.common.write_result), else state `unknown` with the reason.

States: running -> succeeded | failed | cancelled | unknown."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

from jobs.report import counts_of

from . import errors
from .jobcall import JobCall, RunRequest, build, check, command
from .ratelimits import Limiter, core_seconds, run_cores

log = logging.getLogger(__name__)

ACTIVE = ("running",)
EVENTS_FILE = "events.jsonl"  # in the run's directory: the job's run events (jobs/run_events.py)
State = Literal["running", "succeeded", "failed", "cancelled", "unknown"]
STATES: tuple[str, ...] = get_args(State)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job TEXT NOT NULL,
    request TEXT NOT NULL,
    args TEXT NOT NULL,
    dir TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    pid INTEGER,
    proc_start TEXT,
    exit_status INTEGER,
    summary TEXT,
    error TEXT,
    note TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, seq);
"""
# Columns added after the first release: added to an older database at start.
LATER_COLUMNS = {"key_name": "TEXT", "cores": "INTEGER", "core_seconds": "INTEGER"}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields from the third on (state, ppid, pgrp, ...)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22): with the
    pid, it names one process, even after pid reuse. None once it is gone
    (a zombie is gone: it runs nothing and its parent has yet to reap it)."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
    return False


def tail(path: Path, lines: int, max_bytes: int = 1 << 20) -> str:
    """The last `lines` lines of a file, reading at most max_bytes from its end."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) + ("\n" if text else "")


class RunStore:
    """The runs table: one connection, one lock (the watchers are threads)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            have = {row["name"] for row in self._db.execute("PRAGMA table_info(runs)")}
            for name, kind in LATER_COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def insert(self, row: dict[str, Any]) -> None:
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._locked() as db:
            db.execute(f"INSERT INTO runs ({names}) VALUES ({marks})", list(row.values()))

    def update(self, run_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._locked() as db:
            db.execute(f"UPDATE runs SET {sets} WHERE id = ?", [*fields.values(), run_id])

    def finish(self, run_id: str, **fields: Any) -> bool:
        """Set an ended run's fields unless it already ended; whether it did now."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._locked() as db:
            cur = db.execute(f"UPDATE runs SET {sets} WHERE id = ? AND state = 'running'", [*fields.values(), run_id])
            return cur.rowcount == 1

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._locked() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def page(self, state: str | None, after: int | None, limit: int) -> list[dict[str, Any]]:
        """Newest first; `after`: the seq of the last run of the previous page."""
        where: list[str] = []
        params: list[Any] = []
        if state:
            where.append("state = ?")
            params.append(state)
        if after is not None:
            where.append("seq < ?")
            params.append(after)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY seq DESC LIMIT ?"
        with self._locked() as db:
            return [dict(r) for r in db.execute(sql, [*params, limit]).fetchall()]

    def running_of(self, key_name: str) -> int:
        with self._locked() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM runs WHERE state = 'running' AND key_name = ?", (key_name,)
            ).fetchone()
        return int(row[0])

    def active(self) -> list[dict[str, Any]]:
        with self._locked() as db:
            return [dict(r) for r in db.execute("SELECT * FROM runs WHERE state = 'running'").fetchall()]

    def close(self) -> None:
        with self._locked() as db:
            db.close()


class RunManager:
    def __init__(
        self,
        store: RunStore,
        runs_dir: Path,
        repo: Path,
        pipeline_config: Path,
        grace_s: float,
        progress_s: float = 5.0,
        limiter: Limiter | None = None,
    ) -> None:
        self.store, self.runs_dir, self.repo = store, runs_dir, repo
        self.pipeline_config, self.grace_s, self.progress_s = pipeline_config, grace_s, progress_s
        self.limiter = limiter
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()  # one submission's check + start at a time
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop watching (the jobs go on, in their own sessions) and close the database."""
        self._closed.set()
        self.store.close()

    # ----- submitting ------------------------------------------------------

    def submit(self, request: RunRequest, key_name: str | None = None) -> dict[str, Any]:
        """Check the key's run limits, check the request as the job would,
        start it, record it: the run. key_name: the API key's name (None: no
        limits, e.g. a caller inside the service)."""
        if "events.progress_seconds" not in request.overrides:  # the job's progress events, for /events
            overrides = {**request.overrides, "events.progress_seconds": self.progress_s}
            request = request.model_copy(update={"overrides": overrides})
        call = build(request, str(self.pipeline_config))
        settings = [
            f"{k}={'true' if v is True else 'false' if v is False else v}" for k, v in request.overrides.items()
        ]
        run_id = uuid.uuid4().hex[:16]
        run_dir = self.runs_dir / run_id
        cluster_cores = self.limiter.settings.cluster_cores if self.limiter else 1
        cores = run_cores(request.master, request.dry_run, call.job, cluster_cores)
        with self._lock:  # two requests for one output (or over one key's limit): the second sees the first
            if self.limiter is not None and key_name is not None:
                self._within_limits(key_name)
            check(call, settings, request.overwrite)
            self._claim(call, run_id)
            run_dir.mkdir(parents=True, exist_ok=True)
            argv, extra = command(call, self.repo, request.master, request.dry_run)
            env = dict(os.environ)
            env.update(extra)
            env.update(
                AIBATCH_JOB_LOG=str(run_dir / "job.log"),
                AIBATCH_RESULT_FILE=str(run_dir / "result.json"),
                AIBATCH_EVENTS_FILE=str(run_dir / EVENTS_FILE),
                AIBATCH_PROGRESS="0",
            )
            row = {
                "id": run_id,
                "job": call.job,
                "request": request.model_dump_json(by_alias=True),
                "args": json.dumps(argv),
                "dir": str(run_dir),
                "state": "running",
                "created_at": now(),
                "key_name": key_name,
                "cores": cores,
            }
            self.store.insert(row)
            with open(run_dir / "console.log", "wb") as console:
                try:
                    proc = subprocess.Popen(
                        argv,
                        cwd=self.repo,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=console,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: DELETE ends all of it
                    )
                except OSError as exc:
                    self.store.finish(run_id, state="failed", ended_at=now(), error=f"could not start: {exc}")
                    raise errors.Problem(500, f"could not start the job: {exc}") from None
            self.store.update(run_id, pid=proc.pid, proc_start=process_start(proc.pid), started_at=now())
            self._children[run_id] = proc
        threading.Thread(target=self._watch_child, args=(run_id, proc), name=f"run-{run_id}", daemon=True).start()
        log.info("run %s: %s started (pid %d)", run_id, call.job, proc.pid)
        return self.view(run_id)

    def _within_limits(self, key_name: str) -> None:
        """429 where the key runs its concurrent runs already or has spent its core-seconds of the day."""
        assert self.limiter is not None
        running = self.store.running_of(key_name)
        verdict = self.limiter.concurrent(key_name, running)
        if not verdict.allowed:
            raise verdict.problem(
                f"this key has {running} runs running, its limit of concurrent runs: wait until one ends"
            )
        verdict = self.limiter.budget(key_name)
        if not verdict.allowed:
            raise verdict.problem(
                f"this key has spent its {verdict.limit} core-seconds of runs for the day "
                "(each ended run: its seconds x the cores of its master)"
            )

    def _claim(self, call: JobCall, run_id: str) -> None:
        """409 where a running run already writes one of these outputs."""
        mine = set(call.outputs.values())
        for other in self.store.active():
            theirs = set(json.loads(other["request"]).get("outputs", {}).values())
            if mine & theirs:
                raise errors.conflict(f"run {other['id']} is writing {', '.join(sorted(mine & theirs))}")

    # ----- watching --------------------------------------------------------

    def _watch_child(self, run_id: str, proc: subprocess.Popen[bytes]) -> None:
        status = proc.wait()
        self._children.pop(run_id, None)
        try:
            self._ended(run_id, status)
        except sqlite3.ProgrammingError:  # closed as the service stopped: the next one settles the run
            pass

    def _watch_found(self, run_id: str, pid: int, start: str) -> None:
        while (process_start(pid) == start or group_alive(pid)) and not self._closed.is_set():
            self._closed.wait(1.0)
        try:
            self._ended(run_id, None)
        except sqlite3.ProgrammingError:  # closed as the service stopped: the next one settles the run
            pass

    def _ended(self, run_id: str, status: int | None) -> None:
        """Record how the run ended: from its result file, its exit status, a cancel."""
        if self._closed.is_set():  # the service stops: the next one finds the run again
            return
        run = self.store.get(run_id)
        if run is None or run["state"] != "running":
            return
        request = json.loads(run["request"])
        result = self.result_of(run)
        fields: dict[str, Any] = {"ended_at": now(), "exit_status": status}
        if run["cancel_requested"]:
            fields.update(state="cancelled", error=run["error"] or "cancelled by a DELETE request")
        elif result and result.get("state") == "succeeded" and status in (0, None):
            fields.update(state="succeeded", summary=json.dumps(result.get("summary"), default=str))
        elif request.get("dry_run") and status == 0:
            fields.update(state="succeeded", summary=json.dumps({"dry_run": True, "checks": "passed"}))
        elif result and result.get("state") == "failed":
            fields.update(state="failed", error=result.get("error"), exit_status=result.get("exit_status", status))
        elif status is None:
            fields.update(
                state="unknown",
                note="the service restarted while the job ran; the job ended without writing its result",
            )
        else:
            fields.update(state="failed", error=self._error_line(run) or f"the job exited with status {status}")
        started = run["started_at"] or run["created_at"]
        cost = core_seconds((_parse(fields["ended_at"]) - _parse(started)).total_seconds(), run["cores"] or 1)
        fields["core_seconds"] = cost
        if self.store.finish(run_id, **fields):
            log.info("run %s: %s", run_id, fields["state"])
            if self.limiter is not None and run["key_name"]:
                self.limiter.charge(run["key_name"], cost)

    @staticmethod
    def result_of(run: dict[str, Any]) -> dict[str, Any] | None:
        try:
            data = json.loads((Path(run["dir"]) / "result.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _error_line(run: dict[str, Any]) -> str:
        lines = [ln for ln in tail(Path(run["dir"]) / "console.log", 50).splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith(("error:", "submit.sh:"))]
        return (errs or lines or [""])[-1][:1000]

    def recover(self) -> None:
        """At start: every run recorded as running is found again or settled."""
        for run in self.store.active():
            pid, start = run["pid"], run["proc_start"]
            if pid and start and process_start(pid) == start:
                self.store.update(run["id"], note="found again after a service restart")
                args = (run["id"], pid, start)
                threading.Thread(target=self._watch_found, args=args, name=f"run-{run['id']}", daemon=True).start()
                log.info("run %s: found again (pid %d)", run["id"], pid)
            else:
                self._ended(run["id"], None)

    # ----- cancelling ------------------------------------------------------

    def cancel(self, run_id: str, by: str = "a DELETE request") -> dict[str, Any]:
        """End the run's process group: SIGTERM, then SIGKILL after the grace
        time. Its outputs stay as they were: the job commits them only on success.
        `by`: what asked, for the run's error line ("cancelled by ...")."""
        run = self.get(run_id)
        if run["state"] != "running":
            raise errors.conflict(f"run {run_id} has already ended ({run['state']})")
        self.store.update(run_id, cancel_requested=1, error=f"cancelled by {by}")
        pid = run["pid"]
        if pid and group_alive(pid):  # started in its own session: its pid is its process group's id
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            while group_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if group_alive(pid):
                self._signal(pid, signal.SIGKILL)
                while group_alive(pid) and time.monotonic() < deadline + 5:
                    time.sleep(0.1)
        proc = self._children.get(run_id)
        if proc is not None:
            proc.wait(timeout=10)
            self._children.pop(run_id, None)
            self._ended(run_id, proc.returncode)
        else:
            self._ended(run_id, None)
        return self.view(run_id)

    @staticmethod
    def _signal(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    # ----- reading ---------------------------------------------------------

    def get(self, run_id: str) -> dict[str, Any]:
        run = self.store.get(run_id)
        if run is None:
            raise errors.not_found(f"no run {run_id!r}")
        return run

    def view(self, run_id: str) -> dict[str, Any]:
        return present(self.get(run_id))

    def log_tail(self, run_id: str, lines: int, source: str) -> str:
        run = self.get(run_id)
        name = {"job": "job.log", "console": "console.log"}[source]
        return tail(Path(run["dir"]) / name, lines)


def present(run: dict[str, Any]) -> dict[str, Any]:
    """A run as the API shows it."""
    request = json.loads(run["request"])
    summary = json.loads(run["summary"]) if run["summary"] else None
    started, ended = run["started_at"], run["ended_at"]
    seconds = None
    if started and ended:
        seconds = round((_parse(ended) - _parse(started)).total_seconds(), 3)
    return {
        "id": run["id"],
        "job": run["job"],
        "state": run["state"],
        "dry_run": bool(request.get("dry_run")),
        "master": request.get("master"),
        "inputs": request.get("inputs", {}),
        "outputs": request.get("outputs", {}),
        "counts": counts_of(summary) if summary else {},
        "summary": summary,
        "timings": {"created_at": run["created_at"], "started_at": started, "ended_at": ended, "seconds": seconds},
        "exit_status": run["exit_status"],
        # enrich's cost in US dollars for the tokens its calls paid (its summary's cost_usd);
        # None for the other jobs, a dry run, or a model the price table lacks
        "cost_usd": summary.get("cost_usd") if isinstance(summary, dict) else None,
        # what the run is charged against its key's budget: its seconds (started to
        # ended) x the cores of its master, rounded up; set once it has ended
        "resources": {"cores": run.get("cores"), "core_seconds": run.get("core_seconds")},
        "error": run["error"],
        "note": run["note"],
        "links": {
            "self": f"/api/v1/runs/{run['id']}",
            "log": f"/api/v1/runs/{run['id']}/log",
            "events": f"/api/v1/runs/{run['id']}/events",
            "ws": f"/api/v1/runs/{run['id']}/ws",
            "report": f"/runs/{run['id']}",
        },
    }


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
