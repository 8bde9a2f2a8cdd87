"""The OpenAI request and error shapes the server speaks, checked before anything is queued.

A parameter tunelab does not support (`n` above 1, `logprobs`, `tool_choice`, ...) is a 400 naming it, never silently
ignored. Two extensions serve tuned runs: `record` fills a run's own prompt template from a record's fields
(`{"dialogue": "..."}`), and `task` names which task of a mixture run's the template or head comes from.
Temperature defaults to 0 (greedy): a tuned model's answer to the same request is then always the same.

The response models below are what the OpenAPI schema publishes for each answer, errors included, so a client
generated from `/openapi.json` (or a fuzzer checking the server against it) reads what the server really sends.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

Scalar = str | int | float | bool
GREEDY_BELOW = 1e-4
"""A temperature this small decodes greedily: the likeliest token holds all the probability anyway, and a smaller
one would overflow the scaled logits (1e-300 is 0 in float32), leaving torch no distribution to sample."""
MAX_SEED = 2**64 - 1
"""The largest seed torch's generator takes (`torch.manual_seed` accepts 0 to 2**64 - 1)."""


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


class FunctionCall(_Request):
    name: str = Field(min_length=1)
    arguments: str | dict = "{}"
    """A JSON object, as OpenAI sends it (a string) or already read; chat templates read it as a mapping."""

    @field_validator("arguments")
    @classmethod
    def _an_object(cls, arguments):
        """The arguments as the mapping training read (`tunelab.kinds.chat_messages`), so a request renders
        exactly as the conversations the run trained on."""
        if isinstance(arguments, dict):
            return arguments
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON ({error.msg})") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object of argument names and values")
        return parsed


class ToolCall(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    """Text; may be left out only by an assistant message that calls tools."""
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None
    """An assistant's calls of the request's tools."""
    tool_call_id: str | None = None
    """Which call a tool message answers."""

    @field_validator("tool_calls")
    @classmethod
    def _only_assistants_call(cls, tool_calls, info):
        if tool_calls and info.data.get("role") != "assistant":
            raise ValueError(f"a {info.data.get('role')} message carries tool_calls; only assistants call tools")
        return tool_calls

    @model_validator(mode="after")
    def _says_something(self):
        if self.content is None and not self.tool_calls:
            raise ValueError(f"a {self.role} message needs content" + (" or tool_calls" * (self.role == "assistant")))
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)

    def as_template(self) -> dict:
        """The message as chat templates (and tunelab's training) read it: a developer message is the system
        one, content is text, tool-call arguments are mappings."""
        message = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump(exclude_none=True) for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            message["name"] = self.name
        return message


class FunctionDefinition(_Request):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(_Request):
    """A tool the model may call, passed to the chat template as training passed a conversation's `tools`."""

    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(_Request):
    include_usage: bool = False


STOP_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
        {"type": "null"},
    ]
}
"""What `_at_most_four` accepts, published as such (the validators word the errors; the schema states the rule)."""


class Generation(_Request):
    """What chat and completion requests share: the model, how long and how to sample, and tunelab's extensions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    """The newer name of max_tokens (the openai client sends it for chat); either may be given."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Annotated[str | list[str] | None, WithJsonSchema(STOP_SCHEMA)] = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    """Reproduces a sampled answer (temperature above 0); 0 to 2**64 - 1, the range torch's generator takes."""
    n: int = Field(1, json_schema_extra={"const": 1})
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
        if self.temperature < GREEDY_BELOW:
            return None
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


class ChatRequest(Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None
    """Passed to the chat template where it renders them; a 400 naming `tools` where it does not."""

    def template_tools(self) -> list[dict] | None:
        return [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None


class CompletionRequest(Generation):
    prompt: str | None = None
    """Continued as it is; a prompt of no tokens (`""`) is refused, as the model has nothing to continue."""


class ClassifyRequest(_Request):
    model: str
    input: str | dict[str, Scalar] | Annotated[list[str | dict[str, Scalar]], Field(min_length=1)]
    """A text, a record of the run's input fields (a text pair), or a non-empty list of either."""
    task: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _something_to_classify(cls, input):
        """Word the empty list's error (the schema publishes the bound, but the union would blame the string)."""
        if isinstance(input, list) and not input:
            raise ValueError("the list is empty: send a text, a record, or a list of at least one")
        return input

    def items(self) -> list[str | dict[str, Scalar]]:
        return self.input if isinstance(self.input, list) else [self.input]


SCORED_CONVERSATION = {"type": "array", "items": {"$ref": "#/components/schemas/Message"}, "minItems": 1}
SCORED_SCHEMA = {
    "anyOf": [SCORED_CONVERSATION, {"type": "array", "items": SCORED_CONVERSATION, "minItems": 1}],
    "description": "A conversation ending with the assistant answer to score, or a non-empty list of them.",
}
"""What `ScoreRequest.messages` accepts, published as such (`ScoreRequest.conversations` checks it, naming the
message at fault as a chat request's error would)."""

CONVERSATION = TypeAdapter(list[Message])


class ScoreRequest(_Request):
    """tunelab: a reward model's score of each conversation's last answer."""

    model: str
    messages: Annotated[list, Field(min_length=1), WithJsonSchema(SCORED_SCHEMA)]

    @field_validator("messages", mode="before")
    @classmethod
    def _something_to_score(cls, messages):
        """Word the empty list's error (the schema publishes the bound)."""
        if isinstance(messages, list) and not messages:
            raise ValueError(
                "the list is empty: send a conversation ending with the answer to score, or a list of them"
            )
        return messages

    def conversations(self) -> list[tuple[str, list[dict]]]:
        """Each conversation as chat templates read it, with the field that holds it (`messages`, or `messages[1]`
        in a list of them); a 400 naming the field at fault (`messages[1][2].role`) when one is not a conversation
        of messages ending with the assistant's answer."""
        many = isinstance(self.messages[0], list)
        scored = []
        for number, turns in enumerate(self.messages if many else [self.messages]):
            where = ["messages", number] if many else ["messages"]
            try:
                messages = CONVERSATION.validate_python(turns)
            except ValidationError as error:
                first = error.errors()[0]
                raise validation_error([{**first, "loc": (*where, *first["loc"])}]) from None
            path = field_path(where)
            if not messages:
                raise ApiError(400, f"{path}: the conversation is empty; end it with the answer to score", param=path)
            if messages[-1].role != "assistant":
                last = field_path([*where, len(messages) - 1, "role"])
                raise ApiError(
                    400,
                    f"{last}: the conversation ends with a {messages[-1].role} turn; a reward model scores the "
                    "assistant's answer, so end the conversation with it",
                    param=last,
                )
            scored.append((path, [message.as_template() for message in messages]))
        return scored


class LoadLoraAdapterRequest(_Request):
    """vLLM's: serve a run's LoRA adapter as `lora_name` (a server started with --allow-adapter-loading)."""

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    """A tunelab run directory under the server's --adapter-root (a relative path is read from there)."""


class UnloadLoraAdapterRequest(_Request):
    """vLLM's: stop serving an adapter and free it."""

    lora_name: str = Field(min_length=1)


class ErrorDetail(BaseModel):
    message: str
    type: str
    """'invalid_request_error', 'authentication_error', 'rate_limit_error', 'timeout' or 'server_error'."""
    param: str | None
    """The request field at fault (`messages[0].role`), when one is."""
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the server answers, in OpenAI's shape."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: Literal["generate", "classify", "score"]
    """tunelab: which endpoints answer it (chat and completions, classify, or score)."""


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


Finish = Literal["stop", "length"]
"""'stop': EOS or a stop string; 'length': max_tokens ran out."""


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Finish


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Finish
    logprobs: None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    """In the first chunk only."""
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Finish | None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion: the role, then the answer piece by piece, then the
    finish reason, then (with `stream_options.include_usage`) the usage with no choices."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: Finish | None
    logprobs: None


class CompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (as `ChatCompletionChunk`, with text instead of deltas)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class Prediction(BaseModel):
    index: int
    label: str
    scores: dict[str, float]
    """Every label's probability."""


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Classification(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Prediction]
    usage: ClassifyUsage


class Score(BaseModel):
    index: int
    score: float
    """The reward model's score of the conversation's last answer: higher is preferred."""


class Scores(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Score]
    usage: ClassifyUsage


class Health(BaseModel):
    status: Literal["ok"]
    models: list[str]
    queue_depth: int


def validation_error(errors: list[dict]) -> ApiError:
    """A 400 for pydantic's first complaint, naming the parameter as OpenAI does (`messages[0].role`)."""
    first = errors[0]
    param = field_path([part for part in first["loc"] if part != "body"])
    if first["type"] == "extra_forbidden":
        return ApiError(
            400, f"parameter '{param}' is not supported by tunelab serve", param=param, code="unsupported_parameter"
        )
    if first["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first['msg']})", code="invalid_json")
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


def field_path(location: list[str | int]) -> str | None:
    """A request field as OpenAI names it: keys joined by dots, list positions in brackets
    (`messages[2].tool_calls[0].function.arguments`)."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None
