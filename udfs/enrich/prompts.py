"""Versioned prompt templates: files `conf/prompts/ID@VERSION`, released by content hash.

A template file is TOML with two strings, `system` and `user`; `${column}` in
them is replaced by that column of the row. Every released version has its
sha256 in `conf/prompts/manifest.toml`; a file whose content no longer matches
its hash was edited in place and is refused (answers cached under that version
would otherwise silently mean two different prompts). A change is a new
version: copy the file to ID@N+1, edit it, and release it with
`.venv/bin/python -m udfs.enrich.prompts release conf/prompts ID@N+1`.

Row values are data, not template: each is inserted once, JSON-encoded (quoted,
with quotes, newlines and angle brackets escaped), so a row can neither close
the delimiters around it nor inject another placeholder.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import TEMPLATE_PATTERN

MANIFEST = "manifest.toml"


class PromptError(ValueError):
    """A template cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class Template:
    id: str  # "name@version"
    system: str
    user: str
    sha256: str
    fields: tuple[str, ...]  # the row columns the template reads


def content_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_manifest(prompts_dir: Path) -> dict[str, str]:
    path = prompts_dir / MANIFEST
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PromptError(
            f"{path}: no prompt manifest (it lists the content hash of every released template)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise PromptError(f"{path}: not valid TOML: {exc}") from None
    templates = doc.get("templates", {})
    if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
        raise PromptError(f'{path}: expected a [templates] table of "id@version" = "sha256:..." entries')
    return dict(templates)


def _fields(where: str, text: str) -> list[str]:
    names = []
    for match in string.Template.pattern.finditer(text):
        if match.group("invalid") is not None:
            raise PromptError(f"{where}: a '$' that is not a ${{column}} placeholder (write $$ for a dollar sign)")
        name = match.group("named") or match.group("braced")
        if name:
            names.append(name)
    return names


def load_template(prompts_dir: str | Path, template_id: str) -> Template:
    """Read and check one released template; refuses an unknown or edited one."""
    if not re.fullmatch(TEMPLATE_PATTERN, template_id):
        raise PromptError(f"enrich.template: {template_id!r} is not of the form name@version (e.g. review_enrich@1)")
    prompts_dir = Path(prompts_dir)
    path = prompts_dir / template_id
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptError(f"{path}: no such prompt template") from None
    released = read_manifest(prompts_dir).get(template_id)
    digest = content_hash(data)
    if released is None:
        raise PromptError(
            f"{path}: template {template_id} is not released (no hash in {prompts_dir / MANIFEST}); release it with "
            f"`python -m udfs.enrich.prompts release {prompts_dir} {template_id}`"
        )
    if released != digest:
        name, version = template_id.split("@")
        raise PromptError(
            f"{path}: template {template_id} was edited after it was released (content {digest[:19]}..., released "
            f"{released[:19]}...). Released templates are immutable: restore it, and put the change in a new version "
            f"{name}@{int(version) + 1}, then release that"
        )
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PromptError(f"{path}: not a valid TOML template: {exc}") from None
    unknown = sorted(set(doc) - {"system", "user"})
    if unknown or not isinstance(doc.get("user"), str) or not isinstance(doc.get("system", ""), str):
        raise PromptError(f"{path}: a template has exactly two strings, system and user (found: {sorted(doc)})")
    fields = _fields(f"{path}: system", doc.get("system", "")) + _fields(f"{path}: user", doc["user"])
    return Template(template_id, doc.get("system", ""), doc["user"], digest, tuple(dict.fromkeys(fields)))


def quote(value: Any) -> str:
    """A row value as inert data: a JSON string with <, > and & escaped."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    encoded = json.dumps(text, ensure_ascii=False)
    return encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(template: Template, row: Mapping[str, Any]) -> str:
    """The user message for one row (pure). Missing columns are an error naming them."""
    missing = [f for f in template.fields if f not in row]
    if missing:
        raise PromptError(f"template {template.id} reads column(s) {missing} that the row does not have")
    values = {f: quote(row[f]) for f in template.fields}
    # One substitution pass: the inserted values are never scanned for placeholders again.
    return string.Template(template.user).substitute(values)


def release(prompts_dir: str | Path, template_id: str) -> str:
    """Add a new template version's hash to the manifest; never rewrites a released one."""
    prompts_dir = Path(prompts_dir)
    path = prompts_dir / template_id
    if not re.fullmatch(TEMPLATE_PATTERN, template_id):
        raise PromptError(f"{template_id!r} is not of the form name@version")
    digest = content_hash(path.read_bytes())
    manifest_path = prompts_dir / MANIFEST
    manifest = read_manifest(prompts_dir) if manifest_path.exists() else {}
    if template_id in manifest:
        if manifest[template_id] == digest:
            return digest
        raise PromptError(f"{template_id} is already released with another content hash; release a new version")
    with manifest_path.open("a") as fh:
        if not manifest_path.stat().st_size:
            fh.write("# Content hashes of released prompt templates (udfs/enrich/prompts.py). Never edit an entry.\n")
            fh.write("[templates]\n")
        fh.write(f'"{template_id}" = "{digest}"\n')
    load_template(prompts_dir, template_id)  # it must now load cleanly
    return digest


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "release":
        sys.stderr.write("usage: python -m udfs.enrich.prompts release PROMPTS_DIR ID@VERSION\n")
        return 2
    try:
        digest = release(argv[1], argv[2])
    except (PromptError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(f"{argv[2]} released: {digest}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
