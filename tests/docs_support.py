from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

# Reads README.md and docs/*.md into what the documentation tests check: fenced blocks with
# their info strings, inline code spans, links and the command lines of shell blocks.

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS_DIR = ROOT / "docs"
PAGES: tuple[Path, ...] = (README, *sorted(DOCS_DIR.glob("*.md")))

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
# Spans of two or more backticks first (they may hold single backticks), then single ones.
_LONG_CODE = re.compile(r"(`{2,})(?P<code>.+?)\1")
_CODE = re.compile(r"`(?P<code>[^`\n]+)`")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\((?P<target>[^)\s]+)\)")
SHELL_INFOS = {"sh", "shell", "bash", "console"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str  # the info string, e.g. "sql", "sql grafana", "sql no-run"
    text: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(self.info.split()[1:])

    @property
    def label(self) -> str:
        shown = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{shown}:{self.line}"


@dataclass(frozen=True)
class Page:
    path: Path
    blocks: tuple[Block, ...]
    prose: str  # the text outside fenced blocks

    def code_spans(self) -> list[str]:
        without_long = _LONG_CODE.sub(" ", self.prose)
        return [m["code"].strip() for m in _CODE.finditer(without_long)]

    def links(self) -> list[str]:
        return [m["target"] for m in _LINK.finditer(_LONG_CODE.sub(" ", self.prose))]


def parse(path: Path) -> Page:
    blocks: list[Block] = []
    prose: list[str] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            prose.append(lines[i])
            i += 1
            continue
        fence = opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            body.append(lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: fenced block never closed")
        blocks.append(Block(path, i + 1, opening["info"].strip(), "\n".join(body)))
        prose.append("")
        i = j + 1
    return Page(path, tuple(blocks), "\n".join(prose))


def pages() -> list[Page]:
    return [parse(path) for path in PAGES]


def blocks(language: str) -> list[Block]:
    return [b for page in pages() for b in page.blocks if b.language == language]


def shell_commands(block: Block) -> list[list[str]]:
    """Each command line of a shell block as words: comments, continuations and leading
    VAR=value assignments removed."""
    commands = []
    for raw in block.text.replace("\\\n", " ").split("\n"):
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise AssertionError(f"{block.label}: cannot split {raw!r}: {exc}") from None
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words and words[0] == "export":
            continue
        if words:
            commands.append(words)
    return commands


def assignments(block: Block) -> list[str]:
    """Names of the environment variables a shell block sets (VAR=... and export VAR=...)."""
    names = []
    for raw in block.text.split("\n"):
        for word in shlex.split(raw, comments=True) if raw.strip() else []:
            match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=", word)
            if match:
                names.append(match.group(1))
    return names


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Page) -> set[str]:
    found = set()
    for line in page.prose.split("\n"):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            found.add(github_anchor(match.group(1)))
    return found
