"""Prompt files: plain text (one prompt per line) or a JSON list of strings (GPTEval3D's format).

GPTEval3D ships its 110 prompts as ``data/tournament-v0/prompts.json`` in the 3DTopia/GPTEval3D
repository, a JSON list of strings; a prompt's id is its index from 0.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from .errors import SplatVLMError

MAX_PROMPT_CHARS = 2000


def check_prompt(prompt: str, where: str = "prompt") -> str:
    """Strip and validate one prompt."""
    if not isinstance(prompt, str):
        raise SplatVLMError(f"{where} must be a string, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise SplatVLMError(f"{where} is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise SplatVLMError(f"{where} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
    if any(unicodedata.category(c) == "Cc" and c not in "\t" for c in text):
        raise SplatVLMError(f"{where} contains control characters")
    return text


class Prompts(list):
    """The prompts of a file, with ``where[i]`` naming prompt i's place in it ("line 7 of p.txt")."""

    def __init__(self, prompts: list[str], where: list[str]):
        super().__init__(prompts)
        self.where = where

    def __getitem__(self, index):  # slices (--limit) keep their places
        if isinstance(index, slice):
            return Prompts(list.__getitem__(self, index), self.where[index])
        return list.__getitem__(self, index)


def where_of(prompts: list[str]) -> list[str]:
    """Each prompt's place in its file, or its index when the list did not come from a file."""
    return list(getattr(prompts, "where", [f"prompt {i}" for i in range(len(prompts))]))


def read_prompts(path: str | Path) -> Prompts:
    """Read a prompt file; JSON when it starts with '[', else one prompt per non-empty line ('#' comments)."""
    from .files import check_regular_file

    path = Path(path)
    if path.exists():
        check_regular_file(path, "prompt file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SplatVLMError(f"prompt file {path} does not exist") from None
    except IsADirectoryError:
        raise SplatVLMError(f"prompt file {path} is a folder") from None
    except OSError as e:
        raise SplatVLMError(f"cannot read prompt file {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SplatVLMError(f"prompt file {path} is not UTF-8 (bad byte at offset {e.start})") from None
    stripped = text.strip()
    if not stripped:
        raise SplatVLMError(f"prompt file {path} is empty")
    if stripped[0] in '[{"':
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise SplatVLMError(f"prompt file {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
        except RecursionError:
            raise SplatVLMError(
                f"prompt file {path} is nested too deeply; it must hold a flat JSON list"
            ) from None
        except ValueError as e:  # e.g. an integer of thousands of digits
            raise SplatVLMError(f"prompt file {path} is not a list of prompts ({str(e)[:80]})") from None
        if not isinstance(data, list):
            raise SplatVLMError(
                f"prompt file {path} must hold a JSON list of strings, not {type(data).__name__}"
            )
        if not data:
            raise SplatVLMError(f"prompt file {path} holds an empty list")
        where = [f"prompt {i} in {path}" for i in range(len(data))]
        return Prompts([check_prompt(p, w) for p, w in zip(data, where, strict=True)], where)
    prompts, where = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where.append(f"line {lineno} of {path}")
        prompts.append(check_prompt(line, where[-1]))
    if not prompts:
        raise SplatVLMError(f"prompt file {path} has no prompts")
    return Prompts(prompts, where)


def slugify(prompt: str, max_len: int = 48) -> str:
    """A file-name-safe short form of a prompt."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


def token_counts(tokenizer, texts: list[str], special_tokens: bool = True) -> list[int]:
    """Token count of each text, in one batched call (the Rust backend's, multi-threaded, when there is one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(backend, "truncation", None) is None:
        return [len(e.ids) for e in backend.encode_batch(list(texts), add_special_tokens=special_tokens)]
    out = tokenizer(list(texts), add_special_tokens=special_tokens, truncation=False, verbose=False)
    return [len(ids) for ids in out["input_ids"]]
