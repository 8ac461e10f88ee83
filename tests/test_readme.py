"""The README's architecture block names every module of the package, and nothing that is not there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def architecture_modules() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    folder, named = "", set()
    for line in block.splitlines()[1:]:
        first = line.strip().split(" ", 1)[0] if line.strip() else ""
        indent = len(line) - len(line.lstrip(" "))
        if indent == 2 and first.endswith("/"):  # a folder's first line
            folder = first
        elif indent == 2:  # a top-level line
            folder = ""
        for name in re.findall(r"\b[\w]+\.py\b", line):
            named.add(folder + name)
    return named


def test_the_architecture_block_lists_every_module():
    src = ROOT / "src" / "splatvlm"
    modules = {str(p.relative_to(src)) for p in src.rglob("*.py") if p.name != "__init__.py"}
    named = architecture_modules()
    assert not modules - named, f"modules the README does not list: {sorted(modules - named)}"
    assert not named - modules, f"the README lists modules that do not exist: {sorted(named - modules)}"
