"""A cache of tokenised examples, so that re-running a config does not tokenise its data again.

Tokenising is deterministic given the kind of example and model family, the records, the data config and
the tokenizer, so its result is stored under a hash of exactly those inputs
(`cache_key`): anything that could change a token id changes the key, and a
stale entry is never read, only left behind. Each entry is one JSON file
written atomically (temporary file + `os.replace`), so a run killed mid-write
leaves either the old file or none, never a readable half (at most a hidden
`.*.tmp` file that nothing reads). A file that still
cannot be read (corrupt disk, manual edits) counts as a miss and is rewritten.

The cache lives in `$TUNELAB_HOME/cache/tokenized`; `TUNELAB_NO_TOKEN_CACHE=1`
turns it off (always tokenise, write nothing).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from tunelab.config import DataConfig, tunelab_home
from tunelab.data.encode import encode
from tunelab.kinds.base import Family
from tunelab.kinds.encoding import Encoded
from tunelab.records import Record

FORMAT_VERSION = 1
"""Part of every key: bump it when the file layout changes, so old entries stop matching."""


@functools.cache
def encoding_code_digest() -> str:
    """sha256 of the source of the modules that turn records into ids (data/encode.py and the kinds' encoders),
    part of every key: a tunelab upgrade that changes how examples are tokenised never reads entries written
    before it."""
    from tunelab.data import encode as encode_module
    from tunelab.kinds import classification, encoding, generation

    modules = (encode_module, encoding, classification, generation)
    return hashlib.sha256("".join(inspect.getsource(m) for m in modules).encode("utf-8")).hexdigest()


DISABLE_ENV = "TUNELAB_NO_TOKEN_CACHE"


def default_cache_dir() -> Path:
    """Next to tunelab's other caches, resolved per call so a changed $TUNELAB_HOME is honoured."""
    return tunelab_home() / "cache" / "tokenized"


def cache_disabled() -> bool:
    """True when $TUNELAB_NO_TOKEN_CACHE is set to anything but '' or '0'."""
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def _json(value: Any) -> str:
    """Canonical JSON: sorted keys so dict order never changes a key; `default=str` because encoding
    itself only ever sees field values through str(), so str() is the identity that matters."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _backend_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the fast tokenizer's serialised pipeline without its truncation and padding settings:
    transformers resets those on every call from the call's arguments, so they record the last call, not
    the tokenizer (keeping them would make the first `encode` change the key). Re-serialised in
    `to_str`'s own, deterministic order: sorting a large vocabulary's keys would cost more than the rest."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, ensure_ascii=False).encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of everything about the tokenizer that can change the ids `encode` produces.

    A fast tokenizer's `backend_tokenizer.to_str()` holds its vocabulary, merges,
    normaliser, pre-tokeniser and post-processor (so BOS/EOS insertion too); a
    slow one is described by its vocabulary. The chat template shapes decoder
    prompts, the special-token map gives the EOS appended to targets, added
    tokens change how text splits, and truncation side and decode clean-up change
    what truncation keeps. `model_max_length` is left out: `encode` truncates to
    the data config's lengths, never to it.
    """
    added = [
        [index, token.content, token.special, token.lstrip, token.rstrip, token.normalized, token.single_word]
        for index, token in sorted(tokenizer.added_tokens_decoder.items())
    ]
    described = [
        type(tokenizer).__name__,
        _backend_digest(tokenizer) if tokenizer.is_fast else sorted(tokenizer.get_vocab().items()),
        getattr(tokenizer, "chat_template", None),
        tokenizer.special_tokens_map,
        added,
        tokenizer.truncation_side,
        tokenizer.clean_up_tokenization_spaces,
    ]
    return hashlib.sha256(_json(described).encode("utf-8")).hexdigest()


def cache_key(
    kind: str,
    family: Family,
    records: list[Record],
    tokenizer: PreTrainedTokenizerBase,
    data: DataConfig,
    labels: list[str] | None = None,
    with_target: bool = True,
) -> str:
    """sha256 (hex) naming the cache entry for one `encode` call: equal keys mean equal results.

    Hashed, in order: FORMAT_VERSION, the encoding code's digest, the kind of example and model family, the labels (their order is the
    label ids), `with_target`, the whole data config (every field, not just the
    ones today's `encode` reads, so a new field cannot silently share entries),
    the tokenizer fingerprint, then each record's fields as one JSON line.
    Records are hashed in order because example i belongs to record i. Where a
    record came from (`Record.where`) is left out, as it never reaches the
    tokens; the data config's paths are in, so moving a data file costs one
    re-tokenisation, never a wrong hit.
    """
    digest = hashlib.sha256()
    header = [
        FORMAT_VERSION,
        encoding_code_digest(),
        kind,
        family,
        labels,
        with_target,
        data.model_dump(mode="json"),
        tokenizer_fingerprint(tokenizer),
    ]
    digest.update(_json(header).encode("utf-8") + b"\n")
    for record in records:
        digest.update(_json(record.fields).encode("utf-8") + b"\n")  # JSON escapes newlines: one line per record
    return digest.hexdigest()


def _is_example(value: Any) -> bool:
    """Shape check only: each field is an id list (or a classification label id); the ids inside are
    whatever `encode` wrote (checking each one would cost as much as parsing, and a cut-off file
    already fails to parse)."""
    return isinstance(value, dict) and all(isinstance(ids, (list, int)) for ids in value.values())


def read_entry(path: Path, expected_examples: int) -> Encoded:
    """The cached result at `path`; raises ValueError/OSError when it is missing, unparsable or not a
    complete entry, so the caller never gets partial data."""
    stored = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(stored, dict) or stored.get("format") != FORMAT_VERSION:
        raise ValueError("not a token cache entry of this format")
    examples, truncated = stored.get("examples"), stored.get("truncated")
    if not isinstance(examples, list) or len(examples) != expected_examples or type(truncated) is not int:
        raise ValueError(f"expected {expected_examples} examples and a truncated count")
    if not all(_is_example(example) for example in examples):
        raise ValueError("an example is not a mapping of ids")
    return Encoded(examples, truncated)


def write_entry(path: Path, encoded: Encoded) -> None:
    """Write atomically: a reader sees the previous file or the complete new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = json.dumps(
        {"format": FORMAT_VERSION, "truncated": encoded.truncated, "examples": encoded.examples}, separators=(",", ":")
    )
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(document)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def encode_cached(
    kind: str,
    family: Family,
    records: list[Record],
    tokenizer: PreTrainedTokenizerBase,
    data: DataConfig,
    labels: list[str] | None = None,
    with_target: bool = True,
    cache_dir: Path | None = None,
) -> tuple[Encoded, bool]:
    """`encode(...)`'s result and whether it came from the cache.

    A miss (no entry, or an entry that cannot be read) tokenises and stores the
    result. Failing to store it only prints a line: the cache saves time, it
    must never stop a run.
    """
    if cache_disabled():
        return encode(kind, family, records, tokenizer, data, labels, with_target), False
    path = (
        Path(cache_dir or default_cache_dir())
        / f"{cache_key(kind, family, records, tokenizer, data, labels, with_target)}.json"
    )
    if path.exists():
        try:
            return read_entry(path, len(records)), True
        except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            print(f"token cache: ignoring unreadable {path} ({exc}); re-encoding")
    encoded = encode(kind, family, records, tokenizer, data, labels, with_target)
    try:
        write_entry(path, encoded)
    except OSError as exc:
        print(f"token cache: could not write {path} ({exc}); continuing without it")
    return encoded, False
