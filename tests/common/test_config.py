"""Settings from the environment: names, defaults, bounds and the start-up errors that name the variable."""

from __future__ import annotations

import typing

import pytest

from services.common.config import ConfigError
from services.common.logs import LogSettings
from services.gateway.config import GatewayConfig
from services.inference.config import Dtype, InferenceConfig
from services.snapshot.backends.s3 import S3Settings

PEERS = {
    "HALOWEAVE_REDIS_URL": "redis://127.0.0.1:1/0",
    "HALOWEAVE_TRACKER_ADDR": "127.0.0.1:2",
    "HALOWEAVE_SNAPSHOT_ADDR": "127.0.0.1:3",
    "HALOWEAVE_INFERENCE_ADDR": "127.0.0.1:4",
}


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name, value in PEERS.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_values_come_from_the_variables_and_empty_means_the_default(peers: pytest.MonkeyPatch) -> None:
    peers.setenv("HALOWEAVE_GATEWAY_PORT", "8123")
    peers.setenv("HALOWEAVE_GATEWAY_SEND_BUFFER", "64")
    peers.setenv("HALOWEAVE_GATEWAY_SLOW_CLIENT_S", "")
    peers.setenv("haloweave_gateway_host", "0.0.0.0")  # the names are case-sensitive, as documented
    cfg = GatewayConfig.from_env()
    assert (cfg.redis_url, cfg.tracker_addr, cfg.port, cfg.send_buffer_frames) == (
        PEERS["HALOWEAVE_REDIS_URL"],
        PEERS["HALOWEAVE_TRACKER_ADDR"],
        8123,
        64,
    )
    assert (cfg.slow_client_s, cfg.host) == (5.0, "127.0.0.1")
    assert GatewayConfig(port=9000).port == 9000  # a keyword wins over the environment


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HALOWEAVE_TRACKER_ADDR", "", "HALOWEAVE_TRACKER_ADDR is not set (it names a peer this service needs)"),
        ("HALOWEAVE_GATEWAY_PORT", "80a", "HALOWEAVE_GATEWAY_PORT='80a' is not an integer"),
        ("HALOWEAVE_GATEWAY_PORT", "70000", "HALOWEAVE_GATEWAY_PORT='70000' must be at most 65535"),
        ("HALOWEAVE_GATEWAY_MAX_FRAME_BYTES", "0", "HALOWEAVE_GATEWAY_MAX_FRAME_BYTES='0' must be greater than 0"),
        ("HALOWEAVE_GATEWAY_IDLE_TIMEOUT_S", "soon", "HALOWEAVE_GATEWAY_IDLE_TIMEOUT_S='soon' is not a number"),
        ("HALOWEAVE_GATEWAY_IDLE_TIMEOUT_S", "nan", "HALOWEAVE_GATEWAY_IDLE_TIMEOUT_S='nan' is not a number"),
        ("HALOWEAVE_GATEWAY_HARD_FRAME_BYTES", "1024", "HARD_FRAME_BYTES must be >= HALOWEAVE_GATEWAY_MAX_FRAME_BYTES"),
        ("HALOWEAVE_EVENT_STREAM_MAX_EVENTS", "0", "HALOWEAVE_EVENT_STREAM_MAX_EVENTS='0' must be at least 1"),
    ],
)
def test_a_bad_value_stops_the_gateway_naming_the_variable(
    peers: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    from services.common import events

    events.limits.cache_clear()
    peers.setenv(variable, value)
    try:
        with pytest.raises(ConfigError) as refused:
            GatewayConfig.from_env()
    finally:
        events.limits.cache_clear()  # the next test reads the limits again, without the bad value
    assert str(refused.value).startswith("configuration error: ")
    assert message in str(refused.value)


def test_several_bad_values_are_all_named(peers: pytest.MonkeyPatch) -> None:
    peers.setenv("HALOWEAVE_INFERENCE_WORKERS", "0")
    peers.setenv("HALOWEAVE_DTYPE", "int8")
    peers.setenv("HALOWEAVE_DEVICE", "gpu")
    with pytest.raises(ConfigError) as refused:
        InferenceConfig.from_env()
    message = str(refused.value)
    assert "HALOWEAVE_INFERENCE_WORKERS='0' must be at least 1" in message
    assert "HALOWEAVE_DTYPE='int8' is not one of 'float32', 'float16' or 'bfloat16'" in message
    assert "HALOWEAVE_DEVICE: 'gpu' is not 'cpu', 'cuda' or 'cuda:N'" in message


def test_the_batching_bounds_are_checked_together_and_named_as_variables(peers: pytest.MonkeyPatch) -> None:
    peers.setenv("HALOWEAVE_DEVICE", "cpu")
    peers.setenv("HALOWEAVE_MAX_RUNNING", "4")
    peers.setenv("HALOWEAVE_MAX_STEP_TOKENS", "64")
    peers.setenv("HALOWEAVE_PREFILL_CHUNK_TOKENS", "32")
    cfg = InferenceConfig.from_env()
    assert (cfg.limits.max_running, cfg.limits.max_step_tokens, cfg.limits.prefill_chunk_tokens) == (4, 64, 32)
    assert cfg.limits.kv_budget_bytes == 2 * 1024**3
    peers.setenv("HALOWEAVE_MAX_STEP_TOKENS", "2")
    with pytest.raises(ConfigError, match=r"HALOWEAVE_MAX_STEP_TOKENS \(2\) must be at least HALOWEAVE_MAX_RUNNING"):
        InferenceConfig.from_env()


def test_an_unset_device_is_the_best_one_there_is(peers: pytest.MonkeyPatch) -> None:
    import torch

    peers.delenv("HALOWEAVE_DEVICE", raising=False)
    assert InferenceConfig.from_env().device == ("cuda" if torch.cuda.is_available() else "cpu")
    peers.setenv("HALOWEAVE_DEVICE", "cuda:1")
    assert InferenceConfig.from_env().device == "cuda:1"


def test_the_precisions_are_the_engines() -> None:
    from services.inference.engine.config import TORCH_DTYPES

    assert set(typing.get_args(Dtype)) == set(TORCH_DTYPES)


def test_secrets_are_neither_shown_nor_repeated_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-7f3a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-9c1e")
    settings = S3Settings()
    assert settings.secret_access_key == "secret-9c1e"
    assert "secret-9c1e" not in repr(settings) and "id-7f3a" not in repr(settings)
    monkeypatch.setenv("AWS_REGION", "")  # empty: the default
    assert S3Settings().region == "us-east-1"


def test_the_log_level_takes_any_case_and_refuses_unknown_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALOWEAVE_LOG_LEVEL", "debug")
    assert LogSettings().level == "DEBUG"
    monkeypatch.setenv("HALOWEAVE_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="HALOWEAVE_LOG_LEVEL='LOUD' is not one of"):
        LogSettings()
