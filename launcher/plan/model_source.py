"""Where the recipe's model and tokenizer come from, found before anything is launched.

A local directory (with weights when `model.pretrained`), the HF cache, or the hub when it
can be reached. A name found nowhere is one line naming the nearest cached models, instead
of a job that retries the hub for a minute and dies in three tracebacks. Nothing is
downloaded here: the hub is asked only whether the name exists.
"""

from __future__ import annotations

import difflib
import os
import socket
import threading
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from launcher.errors import RecipeError
from launcher.recipe.schema import ModelConfig

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model", "spm.model", "tokenizer.model")
_TRUE = {"1", "true", "yes", "on"}
HUB_TIMEOUT_S = 5.0


def check(m: ModelConfig) -> None:
    """Raise a RecipeError unless the model (with weights when pretrained) and its tokenizer
    can be loaded where the job runs."""
    hub = _Hub()
    _check_model(m, hub)
    tokenizer = m.tokenizer or m.name
    field = "model.tokenizer" if m.tokenizer else "model.name"
    local = _local_dir(field, tokenizer)
    if local is not None:
        if not any((local / f).is_file() for f in TOKENIZER_FILES):
            raise RecipeError(field, f"{local} holds no tokenizer files (none of "
                              f"{', '.join(TOKENIZER_FILES[:4])}, ...)",
                              "set model.tokenizer to a directory or hub name that has them")
        return
    if not any(hub.cached(tokenizer, f) for f in TOKENIZER_FILES):
        hub.require(field, tokenizer, "tokenizer")


def _check_model(m: ModelConfig, hub: "_Hub") -> None:
    local = _local_dir("model.name", m.name)
    if local is not None:
        if not (local / "config.json").is_file():
            raise RecipeError("model.name", f"{local} has no config.json",
                              "point model.name at a directory save_pretrained wrote")
        from launcher.plan.memory import read_config
        read_config(local / "config.json", "model.name")
        if m.pretrained and not any((local / f).is_file() for f in WEIGHTS):
            raise RecipeError("model.name", f"{local} has a config but no weights (no "
                              f"{' or '.join(WEIGHTS[::2])}) and model.pretrained is True",
                              "set model.pretrained=False to train from random weights, or "
                              "add the weights to that directory")
        return
    if hub.cached(m.name, "config.json") and (
            not m.pretrained or any(hub.cached(m.name, f) for f in WEIGHTS)):
        return
    hub.require("model.name", m.name, "model" if m.pretrained else "config")


def _local_dir(field: str, name: str) -> Optional[Path]:
    """The directory `name` names, None for a hub name; a path that is no directory is
    refused (a hub name never starts with /, ./, ../ or ~)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise RecipeError(field, f"{name} is a file, not a model directory",
                          "give the directory that holds config.json")
    if name.startswith(("/", "./", "../", "~")) or name in (".", ".."):
        raise RecipeError(field, f"directory {name} does not exist",
                          "fix the path (relative paths start at the current directory), or "
                          "give a hub name such as bert-base-uncased")
    return None


def hub_cache() -> Path:
    """The HF hub cache as huggingface_hub finds it, read now (not at import)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"),
                                              "huggingface")
    return Path(home).expanduser() / "hub"


def cached_models() -> list[str]:
    root = hub_cache()
    if not root.is_dir():
        return []
    return sorted(p.name[len("models--"):].replace("--", "/") for p in root.iterdir()
                  if p.name.startswith("models--"))


def offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


class _Hub:
    """The HF cache and, at most once per check, the hub itself."""

    def __init__(self) -> None:
        self._reach: Optional[str] = None  # why the hub cannot be asked; "" when it can

    def cached(self, name: str, filename: str) -> bool:
        from huggingface_hub import try_to_load_from_cache

        try:
            return isinstance(try_to_load_from_cache(name, filename, cache_dir=hub_cache()), str)
        except Exception:  # an invalid repo id (spaces, '..') is simply not cached
            return False

    def _unreachable(self) -> str:
        if self._reach is None:
            self._reach = _probe()
        return self._reach

    def require(self, field: str, name: str, what: str) -> None:
        """`name` is not cached: fine if the hub has it, else one line with the nearest
        cached names."""
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(name)
        except Exception:
            raise RecipeError(field, f"'{name}' is neither a local directory nor a valid hub "
                              "name", "give a directory that exists or a name such as "
                              "bert-base-uncased") from None
        why = self._unreachable()
        if not why:
            found = _on_hub(name)
            if found is None:
                return  # the hub answered something other than "no such model": let it load
            if found:
                return
            why = "the hub has no such model (or it is private: set HF_TOKEN)"
        cached = cached_models()
        close = difflib.get_close_matches(name, cached, n=3, cutoff=0.5)
        near = (f"nearest cached: {', '.join(close)}" if close else
                f"the HF cache {hub_cache()} holds {len(cached)} model(s), none close")
        raise RecipeError(field, f"'{name}' ({what}) is not a local directory, not in the HF "
                          f"cache, and {why}; {near}",
                          (f"did you mean '{close[0]}'? " if close else "") +
                          "correct the name, point it at a local directory, or download it "
                          "first where the hub is reachable (huggingface-cli download NAME)")


def _probe() -> str:
    """'' when the hub answers on its port within a few seconds, else why not. Bounded in
    time even where name resolution hangs (a compute node without DNS)."""
    if offline():
        return "the hub is off (HF_HUB_OFFLINE=1)"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
            result.append("")
        except OSError as err:
            result.append(f"the hub ({host}) cannot be reached: {err.strerror or err}")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S + 1)
    return result[0] if result else f"the hub ({host}) did not answer in {HUB_TIMEOUT_S:.0f} s"


def _on_hub(name: str) -> Optional[bool]:
    """True / False when the hub says whether the model exists; None when it says neither
    (a rate limit, a gated model): loading will tell."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
        return True
    except GatedRepoError:
        return None
    except RepositoryNotFoundError:
        return False
    except Exception:
        return None
