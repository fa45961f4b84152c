"""The LLM layer: one small contract, ``async complete(request) -> response``."""

from glan.llm.errors import FatalLLMError, LLMError, ParseError, RequestFailed
from glan.llm.types import ChatRequest, ChatResponse, Message

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "FatalLLMError",
    "LLMError",
    "Message",
    "ParseError",
    "RequestFailed",
]
