"""The README and docs/ stay navigable: every relative link resolves (a file,
and a heading anchor where one is given), and every `./submit.sh JOB` they
name is a job submit.sh runs.

Run with: .venv/bin/python -m pytest tests/test_docs_links.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs.mapreduce.launch import JOBS as TWINS
from jobs.spark.catalog import JOBS as SPARK_JOBS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The other Markdown pages the README and docs link to; their own links are
# checked too, so a move cannot strand them.
LINKED_PAGES = [ROOT / "gateway" / "README.md", ROOT / "udfs" / "enrich" / "README.md"]
# What submit.sh runs besides the catalog's Spark jobs (its dispatch `case`).
SUBMIT_COMMANDS = {"mr", "pack", "env-check", "mqtt-bridge", "serve", "register", "help", "--help", "-h"}
# Global options submit.sh takes before the job's name.
GLOBAL_OPTIONS = {"--master", "--env-archive", "--spark-conf", "--config"}

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page: lowercased, punctuation
    dropped, spaces to hyphens (duplicates numbered)."""
    seen: dict[str, int] = {}
    out = set()
    text = FENCE.sub("", page.read_text())
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES + LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(broken)


def submit_jobs(text: str) -> list[tuple[str, str | None]]:
    """(job, twin) for each `./submit.sh ...` command in the text; twin is the
    mrjob job after `mr`, else None."""
    found = []
    for rest in re.findall(r"\./submit\.sh((?:[ \t]+[^\s|;&`)]+)+)", text):
        words = rest.split()
        while words and words[0] in GLOBAL_OPTIONS:
            words = words[2:]
        while words and words[0].split("=")[0] in GLOBAL_OPTIONS:
            words = words[1:]
        if not words or words[0].startswith(("JOB", "<", "[", "...")):
            continue
        job = words[0]
        twin = words[1] if job == "mr" and len(words) > 1 and not words[1].startswith(("-", "<")) else None
        found.append((job, twin))
    return found


def test_the_job_scanner_sees_jobs_and_twins():
    text = "run `./submit.sh --master yarn score --input X` then ./submit.sh mr ingest -r local A\n./submit.sh nosuch"
    assert submit_jobs(text) == [("score", None), ("mr", "ingest"), ("nosuch", None)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_submit_command_names_a_job(page: Path):
    known = set(SPARK_JOBS) | SUBMIT_COMMANDS
    wrong = []
    for job, twin in submit_jobs(page.read_text()):
        if job.endswith(".py"):  # your own PySpark script, run like a job
            continue
        if job not in known:
            wrong.append(f"./submit.sh {job}: not a job (Spark jobs: {', '.join(SPARK_JOBS)})")
        elif twin is not None and twin not in TWINS and twin not in {"ingest|score|stats"}:
            wrong.append(f"./submit.sh mr {twin}: not a twin (twins: {', '.join(TWINS)})")
    assert not wrong, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(wrong)


def test_readme_fits_a_screenful_of_pages():
    """The README is the front page, details live in docs/ (about 10 KB)."""
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 10_500, f"README.md is {size} bytes; move detail into docs/"
