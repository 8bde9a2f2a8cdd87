"""The OpenAI request and error shapes the server speaks, checked before anything is queued.

A parameter tunelab does not support (`n` above 1, `logprobs`, tools, ...) is a 400 naming it, never silently
ignored. Two extensions serve tuned runs: `record` fills a run's own prompt template from a record's fields
(`{"dialogue": "..."}`), and `task` names which task of a mixture run's the template or head comes from.
Temperature defaults to 0 (greedy): a tuned model's answer to the same request is then always the same.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Scalar = str | int | float | bool


class ApiError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class Generation(_Request):
    """What chat and completion requests share: the model, how long and how to sample, and tunelab's extensions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    """The newer name of max_tokens (the openai client sends it for chat); either may be given."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    record: dict[str, Scalar] | None = None
    """tunelab: the fields of a record, formatted with the run's own prompt template as in training."""
    task: str | None = None
    """tunelab: which task of a mixture run `record` is a record of."""

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported: send one request per answer")
        return n

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling(self) -> dict | None:
        """torch sampling settings, or None for greedy decoding."""
        if self.temperature == 0:
            return None
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


class ChatRequest(Generation):
    messages: list[Message] = Field(default_factory=list)


class CompletionRequest(Generation):
    prompt: str | None = None


class ClassifyRequest(_Request):
    model: str
    input: str | dict[str, Scalar] | list[str | dict[str, Scalar]]
    """A text, a record of the run's input fields (a text pair), or a list of either."""
    task: str | None = None

    def items(self) -> list[str | dict[str, Scalar]]:
        return self.input if isinstance(self.input, list) else [self.input]


def validation_error(errors: list[dict]) -> ApiError:
    """A 400 for pydantic's first complaint, naming the parameter as OpenAI does (`messages.0.role`)."""
    first = errors[0]
    location = [str(part) for part in first["loc"] if part != "body"]
    param = ".".join(location) or None
    if first["type"] == "extra_forbidden":
        return ApiError(
            400, f"parameter '{param}' is not supported by tunelab serve", param=param, code="unsupported_parameter"
        )
    if first["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first['msg']})", code="invalid_json")
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")
