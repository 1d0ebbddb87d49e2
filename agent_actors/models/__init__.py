"""Language models for the agents: Claude through the Anthropic SDK, or an offline demo.

Every model streams `TextDelta`s and ends with one `ModelResult`, telling of each wait to ask
again before its answer began with a `ModelWait` (see `base`); failures raise
`agent_actors.errors.ModelError` with a message fit for the chat.
"""

from agent_actors.errors import ModelError
from agent_actors.models.anthropic_model import DEFAULT_ANTHROPIC_MODEL, AnthropicModel
from agent_actors.models.base import (
    CANCELLED,
    Model,
    ModelEvent,
    ModelResult,
    ModelWait,
    TextDelta,
    Turn,
    normalize_turns,
)
from agent_actors.models.demo import DEMO_LABEL, DemoModel
from agent_actors.models.settings import model_from_settings

__all__ = [
    "CANCELLED",
    "DEFAULT_ANTHROPIC_MODEL",
    "DEMO_LABEL",
    "AnthropicModel",
    "DemoModel",
    "Model",
    "ModelError",
    "ModelEvent",
    "ModelResult",
    "ModelWait",
    "TextDelta",
    "Turn",
    "model_from_settings",
    "normalize_turns",
]
