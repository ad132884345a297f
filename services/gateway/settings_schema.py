"""`GET /v1/settings/schema`: the JSON schema of the session settings, which the web UI builds its form from.

It is the one schema (services/common/session_settings.py), served as it is: titles and descriptions label the
controls, types, bounds and enums make the inputs, and the `x-group`, `x-step` and `x-ui-max` extensions place them.
No credential is needed: it holds nothing of any session.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.common import session_settings

router = APIRouter(tags=["settings"])


@router.get(
    "/v1/settings/schema",
    summary="The JSON schema of the session settings (names, types, bounds, defaults, descriptions)",
    response_model=None,
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def settings_schema() -> dict[str, Any]:
    return session_settings.json_schema()
