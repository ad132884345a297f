"""docs/configuration.md is the settings models rendered, and every variable the source reads is in a model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devstack import env_table
from services.common.config import variable_of

ROOT = Path(__file__).resolve().parents[2]
# A variable's full name: `HALOWEAVE_` and upper-case words, not a prefix that code completes (`HALOWEAVE_GATEWAY_`
# + a name, `HALOWEAVE_<PEER>_ADDR` in prose).
NAME = re.compile(r"\bHALOWEAVE_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_{<])")
SCANNED = ("services", "devstack", "deploy", "docker-compose.yml")


def names_in_source() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for top in SCANNED:
        path = ROOT / top
        files = (
            [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        )
        for file in files:
            try:
                text = file.read_text()
            except UnicodeDecodeError:
                continue
            for name in NAME.findall(text):
                found.setdefault(name, set()).add(str(file.relative_to(ROOT)))
    return found


def test_the_docs_table_is_the_models_rendered() -> None:
    assert env_table.DOC.read_text() == env_table.render(), "run `python -m devstack.env_table --write`"


def test_every_variable_read_anywhere_is_declared_in_a_model() -> None:
    found = names_in_source()
    assert len(found) > 30  # the scan itself works: it sees the variables the models declare
    missing = {name: sorted(files) for name, files in found.items() if name not in env_table.variables()}
    assert not missing, f"read but not in any settings model (or COMPOSE_ONLY): {missing}"


def test_the_scan_sees_a_variable_that_no_model_declares() -> None:
    text = 'value = os.environ.get("HALOWEAVE_NOT_DECLARED")  # HALOWEAVE_GATEWAY_ + name, HALOWEAVE_<PEER>_ADDR'
    assert NAME.findall(text) == ["HALOWEAVE_NOT_DECLARED"]
    assert "HALOWEAVE_NOT_DECLARED" not in env_table.variables()


def test_every_setting_is_named_described_and_documented_once() -> None:
    for model, readers in env_table.MODELS:
        assert readers
        for field_name, info in model.model_fields.items():
            assert isinstance(info.validation_alias, str), f"{model.__name__}.{field_name} has no variable name"
            assert info.description, f"{variable_of(model, field_name)} has no description"
    rows = env_table.rows()
    assert len({row.name for row in rows}) == len(rows)
    shared = {row.name: row.readers for row in rows}
    assert set(shared["HALOWEAVE_REDIS_URL"]) == {"gateway", "tracker", "inference"}
    assert set(shared["HALOWEAVE_EVENT_STREAM_MAX_BYTES"]) == {"gateway", "tracker", "inference"}


def test_the_generated_table_shows_types_bounds_and_defaults() -> None:
    lines = {
        line.split(" | ")[0].strip("| `"): line for line in env_table.render().splitlines() if line.startswith("| `")
    }
    assert "integer 0–65535 | `8000` | gateway" in lines["HALOWEAVE_GATEWAY_PORT"]
    assert "integer ≥ 1000 | `15000` | inference" in lines["HALOWEAVE_CLAIM_IDLE_MS"]
    assert "**required**" in lines["HALOWEAVE_TRACKER_ADDR"]
    assert "`2147483648` (2 GiB)" in lines["HALOWEAVE_KV_BUDGET_BYTES"]
    assert "one of `float32`, `float16`, `bfloat16`" in lines["HALOWEAVE_DTYPE"]
    assert "(secret)" in lines["HALOWEAVE_SNAPSHOT_MASTER_KEY"]
    assert str(ROOT) not in env_table.render()  # machine-dependent defaults are described, not printed


def test_check_fails_on_a_stale_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(env_table.render().replace("`8000`", "`8001`"))
    monkeypatch.setattr(env_table, "DOC", stale)
    assert env_table.main(["--check"]) == 1
    assert env_table.main(["--write"]) == 0
    assert env_table.main(["--check"]) == 0
