"""The shape issue 8 asked for: one request path, no provider flags, a short app.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from gateway import anthropic_api, openai_api, serve
from gateway.dialect import Dialect

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def test_no_function_takes_a_provider_flag():
    for path in sorted(GATEWAY.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for arg in node.args.args + node.args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                    assert annotation != "bool" or not any(
                        word in arg.arg for word in ("anthropic", "openai", "provider")
                    ), f"{path.name}:{node.lineno} {node.name}({arg.arg}: bool)"


def test_both_dialects_provide_the_same_methods_and_routes_share_serve():
    wanted = {name for name, _ in inspect.getmembers(Dialect, inspect.isfunction)} | {
        "name",
        "limit_style",
        "request_id_header",
    }
    for dialect in (openai_api.DIALECT, anthropic_api.DIALECT):
        assert all(hasattr(dialect, name) for name in wanted), type(dialect).__name__
    app_source = (GATEWAY / "app.py").read_text()
    assert app_source.count("await serve(request, ") == 2
    assert list(inspect.signature(serve.serve).parameters) == ["request", "dialect"]
    assert len(app_source.splitlines()) < 200
