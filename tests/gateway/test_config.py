"""Config validation: errors name the key at fault and never a key's value."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, Faults, load_config, parse_config
from gateway.faults import FaultInjector
from tests.gateway.conftest import make_raw_config

REPO = Path(__file__).resolve().parents[2]


def env_for(raw: dict) -> dict:
    return {k["env"]: f"secret-{k['name']}-value" for k in raw["keys"]}


def test_shipped_config_loads():
    config = load_config(REPO / "conf" / "gateway.toml", environ={"AIBATCH_GATEWAY_KEY": "sk-local-dev"})
    assert config.host == "127.0.0.1"
    assert config.model("gpt-4o-mini").id == "gpt-4o-mini-2024-07-18"
    assert config.model("smollm2").backend == "llama"
    assert config.keys[0].admin and config.keys[0].limits.window_seconds == 60


def test_missing_env_var_is_named_without_any_value():
    raw = make_raw_config([{"name": "main"}])
    with pytest.raises(ConfigError) as err:
        parse_config(raw, environ={})
    assert "GW_TEST_KEY_MAIN" in str(err.value) and "keys[0].env" in str(err.value)


def test_key_value_never_in_repr():
    raw = make_raw_config([{"name": "main"}])
    config = parse_config(raw, env_for(raw))
    assert "secret-main-value" not in repr(config) and "secret-main-value" not in str(config.keys)


@pytest.mark.parametrize(
    "mutate,where",
    [
        (lambda r: r["limits"].update(algorithm="leaky"), "limits.algorithm"),
        (lambda r: r["limits"].update(window_seconds=0), "limits.window_seconds"),
        (lambda r: r["limits"].update(requests=0), "limits.requests"),
        (lambda r: r["limits"].update(tokens="many"), "limits.tokens"),
        (lambda r: r["keys"][0].update(limits={"concurrent": 0}), "keys[0].limits.concurrent"),
        (lambda r: r["keys"][0].update(faults={"server_error": 1.5}), "keys[0].faults.server_error"),
        (lambda r: r.update(faults={"server_error": 0.6, "timeout": 0.6}), "faults"),
        (lambda r: r["server"].update(host="0.0.0.0"), "server.host"),
        (lambda r: r["server"].update(colour="blue"), "server"),
        (lambda r: r["models"][0].update(backend="gpu"), "models[0].backend"),
        (lambda r: r["models"][1].update(aliases=["gpt-4o-mini"]), "models[1]"),
        (lambda r: r["keys"].append({"name": "main", "env": "OTHER"}), "keys[1].name"),
        (lambda r: r.update(models=[]), "models"),
        (lambda r: r["latency"].update(distribution="pareto"), "latency.distribution"),
    ],
)
def test_errors_name_the_key_at_fault(mutate, where):
    raw = make_raw_config([{"name": "main"}])
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_config(raw, {**env_for(raw), "OTHER": "x"})
    assert str(err.value).startswith(where)


def test_two_keys_with_the_same_value_are_refused():
    raw = make_raw_config([{"name": "a"}, {"name": "b"}])
    with pytest.raises(ConfigError) as err:
        parse_config(raw, {"GW_TEST_KEY_A": "same", "GW_TEST_KEY_B": "same"})
    assert "same" not in str(err.value).replace("the same key value", "")


def test_faults_are_reproducible_per_seed_and_key():
    faults = Faults(seed=7, server_error=0.3, stream_error=0.2, timeout=0.1)
    draws = [FaultInjector(faults, "k").draw(stream=True) for _ in range(1)]
    a = FaultInjector(faults, "k")
    b = FaultInjector(faults, "k")
    seq_a = [a.draw(stream=True) for _ in range(200)]
    assert seq_a == [b.draw(stream=True) for _ in range(200)]
    assert seq_a != [FaultInjector(faults, "other").draw(stream=True) for _ in range(200)]
    assert seq_a != [
        FaultInjector(Faults(seed=8, server_error=0.3, stream_error=0.2, timeout=0.1), "k").draw(stream=True)
        for _ in range(200)
    ]
    counts = {kind: seq_a.count(kind) for kind in ("server_error", "stream_error", "timeout", None)}
    assert all(counts.values()) and draws[0] == seq_a[0]
    plain = FaultInjector(faults, "k")
    assert "stream_error" not in [
        plain.draw(stream=False) for _ in range(200)
    ]  # stream-only faults skip plain requests


def test_key_tables_override_the_global_ones_field_by_field():
    raw = make_raw_config(
        [{"name": "main", "faults": {"server_error": 0.5}, "limits": {"requests": 7}, "latency": {"fixed_ms": 5}}]
    )
    raw["faults"] = {"seed": 5, "timeout": 0.25}
    raw["latency"] = {"distribution": "fixed", "fixed_ms": 50}
    key = parse_config(raw, env_for(raw)).keys[0]
    assert (key.faults.seed, key.faults.timeout, key.faults.server_error) == (5, 0.25, 0.5)
    assert key.limits.requests == 7 and key.limits.tokens == raw["limits"]["tokens"]
    assert (key.latency.distribution, key.latency.fixed_ms) == ("fixed", 5.0)


def test_commented_example_key_in_the_shipped_config_parses(tmp_path):
    text = (REPO / "conf" / "gateway.toml").read_text()
    start = text.index("# [[keys]]")
    example = "\n".join(line[2:] for line in text[start:].splitlines() if line.startswith("# "))
    (tmp_path / "g.toml").write_text(text[:start] + example + "\n" + text[start:].split("\n\n", 1)[1])
    config = load_config(tmp_path / "g.toml", environ={"AIBATCH_GATEWAY_KEY": "a", "AIBATCH_GATEWAY_FLAKY_KEY": "b"})
    flaky = config.keys[1]
    assert flaky.name == "flaky-batch" and flaky.limits.algorithm == "token_bucket" and flaky.faults.overloaded == 0.05


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: r.update(colour="blue"), "gateway.toml: unknown key 'colour'"),
        (lambda r: r["server"].update(colour="blue"), "server: unknown key 'colour'"),
        (lambda r: r["keys"][0].update(limits={"rpm": 5}), "keys[0].limits: unknown key 'rpm'"),
        (lambda r: r["keys"][0].update(colour="blue"), "keys[0]: unknown key 'colour'"),
        (lambda r: r["models"][0].update(colour="blue"), "models[0]: unknown key 'colour'"),
        (lambda r: r["limits"].update(requests=True), "limits.requests: "),  # no bool for a number
        (lambda r: r["limits"].update(requests="60"), "limits.requests: "),  # no string for a number
        (lambda r: r.update(faults={"seed": 1.5}), "faults.seed: "),
    ],
)
def test_unknown_keys_and_wrong_types_are_refused_by_name(mutate, message):
    raw = make_raw_config([{"name": "main"}])
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env_for(raw))
    assert str(err.value).startswith(message)
