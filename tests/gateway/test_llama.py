"""The `llama` backend: one short real request to SmolLM2-135M-Instruct through
xllamacpp, through both SDKs' parsers (plain and streaming)."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.gateway.conftest import make_raw_config, run_gateway


def test_smollm2_answers_for_real():
    raw = make_raw_config([{"name": "main"}])
    raw["llama"] = {"threads": 2, "n_ctx": 1024}
    with run_gateway(raw) as gw:
        oa = openai.OpenAI(
            api_key=gw.key(), base_url=f"{gw.base_url}/v1", _strict_response_validation=True, max_retries=0
        )
        resp = oa.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12,
            temperature=0,
        )
        assert resp.model == "smollm2-135m-instruct-q4_1"
        text = resp.choices[0].message.content
        assert text.strip()
        assert 1 <= resp.usage.completion_tokens <= 12
        assert resp.usage.prompt_tokens > 5  # the model's own tokenizer and chat template
        assert resp.choices[0].finish_reason in ("stop", "length")
        # Deterministic at temperature 0, and the same through the Anthropic stream.
        an = anthropic.Anthropic(
            api_key=gw.key(), base_url=gw.base_url, _strict_response_validation=True, max_retries=0
        )
        with an.messages.stream(
            model="smollm2",
            max_tokens=12,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            extra_body={"temperature": 0},
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert streamed == text
        assert final.usage.output_tokens == resp.usage.completion_tokens
        assert final.stop_reason in ("end_turn", "max_tokens")


def test_backend_failure_is_a_500_or_an_error_event_not_a_crash(tmp_path):
    raw = make_raw_config([{"name": "main"}])
    raw["llama"] = {"model_path": str(tmp_path / "missing.gguf")}
    with run_gateway(raw) as gw:
        oa = openai.OpenAI(
            api_key=gw.key(), base_url=f"{gw.base_url}/v1", _strict_response_validation=True, max_retries=0
        )
        with pytest.raises(openai.InternalServerError) as err:
            oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert err.value.status_code == 500 and "backend failed" in err.value.message
        an = anthropic.Anthropic(
            api_key=gw.key(), base_url=gw.base_url, _strict_response_validation=True, max_retries=0
        )
        with pytest.raises(anthropic.APIStatusError) as event:
            with an.messages.stream(
                model="smollm2", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                list(stream.text_stream)
        assert event.value.body["error"]["type"] == "api_error"
        # The deterministic models still answer, and the failed requests freed their slots.
        assert (
            oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            .choices[0]
            .message.content
            == "You said: hi"
        )
        assert gw.state.callers[0].limits.concurrency.in_flight == 0
