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


def read_prompts(path: str | Path) -> list[str]:
    """Read a prompt file; JSON when it starts with '[', else one prompt per non-empty line ('#' comments)."""
    path = Path(path)
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
    if stripped[0] in "[{\"":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise SplatVLMError(f"prompt file {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(data, list):
            raise SplatVLMError(f"prompt file {path} must hold a JSON list of strings, not {type(data).__name__}")
        if not data:
            raise SplatVLMError(f"prompt file {path} holds an empty list")
        return [check_prompt(p, f"prompt {i} in {path}") for i, p in enumerate(data)]
    prompts = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        prompts.append(check_prompt(line, f"line {lineno} of {path}"))
    if not prompts:
        raise SplatVLMError(f"prompt file {path} has no prompts")
    return prompts


def slugify(prompt: str, max_len: int = 48) -> str:
    """A file-name-safe short form of a prompt."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"
