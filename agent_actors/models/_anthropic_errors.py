"""Anthropic SDK exceptions turned into `ModelError`s a chat user can read.

The full exception goes to the log; the user sees one sentence saying what happened and
whether trying again may help. Never a stack trace, never the API key.
"""

from __future__ import annotations

import anthropic

from agent_actors.errors import ModelError

_OVERLOADED = "The AI model is overloaded right now. Please try again in a little while."
_RATE_LIMITED = ("The AI model is receiving too many requests (rate limited). "
                 "Please try again in a minute.")
_DROPPED = "The connection to the AI model was lost in the middle of the answer."


def model_error(exc: BaseException, *, model: str, base_url: str,
                model_setting: str = "ANTHROPIC_MODEL") -> ModelError:
    """The `ModelError` for an exception raised while asking ``model`` at ``base_url``;
    ``model_setting`` is where the model's name was given (named in advice to check it)."""
    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, anthropic.APIStatusError):
        return _status_error(exc, model, model_setting)
    if isinstance(exc, anthropic.APITimeoutError):
        return ModelError("The AI model took too long to respond. Please try again.",
                          code="timeout", retryable=True)
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelError(f"Could not connect to the AI model at {base_url}.",
                          code="connection", retryable=True)
    return ModelError(_DROPPED, code="connection", retryable=True)


_WAIT_REASONS = {
    "overloaded": "The AI model is overloaded right now.",
    "rate_limited": "The AI model is receiving too many requests (rate limited).",
    "timeout": "The AI model took too long to respond.",
    "connection": "The connection to the AI model failed.",
    "incomplete": "The AI model's answer broke off before it began.",
    "bad_response": "The AI model sent an answer this app could not read.",
}


def wait_reason(error: ModelError) -> str:
    """Why a request that failed in a way that may pass is about to be sent again: one
    sentence saying what happened, without the final error's advice to try again later."""
    return _WAIT_REASONS.get(error.code, "The AI service reported an error.")


def stream_error(body: dict[str, object], *, model: str,
                 model_setting: str = "ANTHROPIC_MODEL") -> ModelError:
    """The `ModelError` for an ``error`` event in the middle of a streamed answer.

    The response's status was 200 by then, so the error's ``type`` alone says what happened.
    """
    error = body.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return _classified(None, kind if isinstance(kind, str) else None,
                       message[:300] if isinstance(message, str) else "no details", model,
                       model_setting)


def _status_error(exc: anthropic.APIStatusError, model: str, model_setting: str) -> ModelError:
    return _classified(exc.status_code, error_type(exc), _api_message(exc), model, model_setting)


def _classified(status: int | None, kind: str | None, detail: str, model: str,
                model_setting: str) -> ModelError:
    if kind == "overloaded_error" or status == 529:
        return ModelError(_OVERLOADED, code="overloaded", retryable=True, status=status)
    if kind == "rate_limit_error" or status == 429:
        return ModelError(_RATE_LIMITED, code="rate_limited", retryable=True, status=status)
    if kind == "authentication_error" or status == 401:
        return ModelError("The Anthropic API key was rejected. Check ANTHROPIC_API_KEY.",
                          code="authentication", status=status)
    if kind == "permission_error" or status == 403:
        return ModelError(f"This API key may not use the model {model!r}.",
                          code="permission", status=status)
    if kind == "not_found_error" and model in detail:
        return ModelError(f"The model {model!r} was not found. Check {model_setting}.",
                          code="not_found", status=status)
    if kind == "not_found_error":  # not about the model: most often the address's path
        return ModelError(f"The AI model's API found nothing at this address ({detail}). Check"
                          " ANTHROPIC_BASE_URL (without /v1: the SDK adds it) and"
                          f" {model_setting} ({model!r}).", code="not_found", status=status)
    if status == 404:  # without the API's typed error: some other server answers there
        return ModelError("No Anthropic Messages API answers at this address. Check"
                          " ANTHROPIC_BASE_URL.", code="not_found", status=status)
    if kind == "request_too_large" or status == 413:
        return ModelError("The conversation is too long for the AI model.",
                          code="too_large", status=status)
    if status == 400 or kind == "invalid_request_error":
        return ModelError(f"The AI model rejected the request: {detail}",
                          code="bad_request", status=status)
    return ModelError(f"The AI service reported an error ({kind or status}). Please try again.",
                      code="api_error", retryable=True, status=status)


def error_type(exc: anthropic.APIStatusError) -> str | None:
    """``error.type`` from the body (also for mid-stream ``error`` events, whose status is 200)."""
    kind = getattr(exc, "type", None)
    if isinstance(kind, str):
        return kind
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return str(error["type"])
    return None


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
    return f"HTTP {exc.status_code}"
