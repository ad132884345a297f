"""OpenAI request parameters → the session's settings, derived from the settings schema (its `x-openai` names).

Each request sets every setting a parameter maps to: the value it gives, or the setting's default when it gives
none, so a reply depends on its own request only (as with OpenAI), not on what an earlier request asked for.
"""

from __future__ import annotations

from typing import Any

from services.common import session_settings
from services.gateway.openai.models import ChatCompletionRequest


def settings_for(request: ChatCompletionRequest) -> dict[str, Any]:
    defaults = session_settings.SessionSettings()
    changes: dict[str, Any] = {}
    for parameter, setting in session_settings.openai_parameters().items():
        value = request.stop_strings() if parameter == "stop" else getattr(request, parameter)
        if value is not None:
            changes[setting] = value
        else:
            default = getattr(defaults, setting)
            changes.setdefault(setting, list(default) if isinstance(default, tuple) else default)
    return changes


def parameter_of(setting: str) -> str:
    """The request parameter to name in a refusal of `setting`."""
    for parameter, name in session_settings.openai_parameters().items():
        if name == setting:
            return parameter
    return setting
