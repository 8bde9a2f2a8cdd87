"""What a model reference names, checked in seconds before anything is created: a registry model, a local
folder, or a Hugging Face hub id that the hub (or the local hub cache) has.

`from_pretrained` given a misspelt name retries the hub for half a minute and ends in a traceback, after the
run directory exists. Asking the hub once, with a short timeout, lets every command refuse such a name up
front, saying which of the three readings failed and why.
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path

from tunelab.config import load_config
from tunelab.models.registry import REGISTRY, ModelNotAvailable, package_dir

HUB_TIMEOUT_SECONDS = 5.0
"""How long one hub lookup may take before the hub counts as unreachable."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
"""A hub repository id, NAME or OWNER/NAME (huggingface_hub's own rules, less its corner cases)."""


def _not_registry_nor_folder(reference: str) -> str:
    guess = difflib.get_close_matches(reference, list(REGISTRY), n=1, cutoff=0.6)
    hint = f"did you mean '{guess[0]}'? " if guess else ""
    return (
        f"model '{reference}' is not a registry name ({hint}`tunelab models list` shows them: "
        f"{', '.join(REGISTRY)}), not a local folder"
    )


@functools.lru_cache(maxsize=64)
def _hub_problem(repo_id: str, revision: str | None) -> str | None:
    """Why the hub id cannot be loaded here, or None when it can (cached locally, or found on the hub)."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return "it is not in the local hub cache and HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_SECONDS)
    except GatedRepoError:
        return "it is gated on the hub: accept its terms there and log in with `hf auth login`"
    except RepositoryNotFoundError:
        return "the hub has no such model (or it is private: log in with `hf auth login`)"
    except RevisionNotFoundError:
        return f"the hub has no revision '{revision}' of it (model.revision)"
    except HfHubHTTPError as exc:
        return f"the hub answered {exc.response.status_code if exc.response is not None else 'with an error'}"
    except Exception as exc:  # whatever the transport raises: no answer from the hub, which is what we report
        return f"the hub could not be reached at {constants.ENDPOINT} ({type(exc).__name__}: {exc})"
    return None


def check_reference(reference: str, revision: str | None = None) -> None:
    """Raise ModelNotAvailable, with what to do, when `reference` names no model this machine can load."""
    if reference in REGISTRY:
        package_dir(REGISTRY[reference])  # raises with the install command when its package is missing
        return
    path = Path(reference).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ModelNotAvailable(
            f"model '{reference}' is a file; give the folder that holds its config.json and weights"
        )
    not_here = _not_registry_nor_folder(reference)
    if not _HUB_ID.fullmatch(reference):
        raise ModelNotAvailable(f"{not_here}, nor a Hugging Face hub id (NAME or OWNER/NAME)")
    problem = _hub_problem(reference, revision)
    if problem:
        raise ModelNotAvailable(f"{not_here};\nas a Hugging Face hub id: {problem}")


def run_directory(reference: str) -> Path | None:
    """The run directory a model reference names (a folder holding a run.json), or None."""
    path = Path(reference).expanduser()
    return path if (path / "run.json").is_file() else None


def pretrained_root(reference: str) -> str:
    """The pretrained model at the start of a chain of runs (the reference itself when it names no run)."""
    while (run := run_directory(reference)) is not None:
        reference = load_config(run / "config.yaml").model.name
    return reference
