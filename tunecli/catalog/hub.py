"""A hub model's config.json through ``huggingface_hub``: the local cache first (the snapshot that
``refs/<revision>`` names, ``main`` by default), then that one file from the Hub when it is reachable.

Only config.json is ever fetched, never weights. Every answer is a path or a reason why there is none,
so `tune new` can write a recipe with a warning instead of refusing a model it cannot see from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
_TRUE = ("1", "on", "yes", "true")


@dataclass(frozen=True)
class ConfigLookup:
    path: Path | None  # the config.json found, or None
    reason: str = ""  # why there is none (for the warning)
    missing: bool = False  # the Hub answered that the repo or revision does not exist


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when set after it was imported."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cached_config(repo_id: str, revision: str | None) -> Path | None:
    """config.json of ``repo_id`` at ``revision`` (a branch, tag or commit) in the local HF cache."""
    return cached_file(repo_id, CONFIG, revision)


def cached_file(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """A file of a hub model in the local HF cache (the snapshot refs/<revision> names), or None."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except HFValidationError:  # not a valid repo id at all
        return None
    return Path(found) if isinstance(found, str) else None


def find_config(repo_id: str, revision: str | None) -> ConfigLookup:
    """The cache, then the Hub (config.json only, a short timeout); never raises for network trouble."""
    cached = cached_config(repo_id, revision)
    if cached is not None:
        return ConfigLookup(cached)
    if hub_offline():
        return ConfigLookup(None, "HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache")
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors

    try:
        return ConfigLookup(Path(hf_hub_download(repo_id, CONFIG, revision=revision, etag_timeout=5)))
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as e:
        if isinstance(e, errors.GatedRepoError):
            return ConfigLookup(None, "the repository is gated and this machine is not logged in (hf auth login)")
        what = "revision" if isinstance(e, errors.RevisionNotFoundError) else "repository"
        return ConfigLookup(None, f"the Hub has no such {what}", missing=True)
    except errors.HFValidationError:
        return ConfigLookup(None, "not a valid hub id", missing=True)
    except Exception as e:  # offline, proxy, DNS, timeouts: the Hub cannot answer from here
        return ConfigLookup(None, f"the Hub cannot be reached from here ({type(e).__name__})")
