from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest

from bench.__main__ import build_parser as bench_parser
from tests.docs_support import (
    DOCS_DIR,
    PAGES,
    README,
    ROOT,
    SHELL_INFOS,
    Page,
    anchors,
    assignments,
    parse,
    shell_commands,
)
from worker.cli.main import build_parser as worker_parser

# What README.md and docs/*.md say must be true of the tree: the paths, commands, make targets,
# Python names, SQL objects, environment variables and Prometheus metrics they name.

# Made at run time, so absent from a fresh checkout: the demo's output, the virtualenv and the
# engine's npm packages (make setup), the copy of .env.example that compose reads, bench results.
GENERATED = (".demo", ".venv", ".env", "engine/node_modules", "bench/results")
TOP_LEVEL = {p.name for p in ROOT.iterdir() if p.name != ".git"} | {".demo", ".venv", ".env"}
# Named by the docs, read by other programs than ours.
FOREIGN_VARIABLES = {
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
}
SOURCE_GLOBS = (
    "worker/**/*.py", "tests/**/*.py", "bench/**/*.py", "sql/**/*.sql", "deploy/**/*",
    "engine/*.mjs", "engine/lib/*.mjs", "Makefile", "docker-compose.yml", ".env.example",
    ".ci/run",
)  # fmt: skip
_PATH = re.compile(r"^\.?[A-Za-z0-9_][\w.\-]*(/[\w.\-*]*)*$")
_WORKER_NAME = re.compile(r"^worker(\.[A-Za-z_]\w*)+")
_SQL_NAME = re.compile(r"\bobservability\.([a-z_][a-z0-9_]*)")
_VARIABLE = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
_METRIC = re.compile(r"^observability_[a-z_]+$")
_ALERT = re.compile(r"^Observability[A-Z]\w+$")
PYTHONS = {"python", "python3", ".venv/bin/python"}


@cache
def source_text() -> str:
    files = {p for pattern in SOURCE_GLOBS for p in ROOT.glob(pattern) if p.is_file()}
    files -= {Path(__file__).resolve()}  # its own examples of names that do not exist
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(files))


@cache
def makefile() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.\-]+)\s*:(?!=)", text, re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", text, re.M))
    return targets, variables


def words_of(page: Page) -> Iterator[tuple[str, list[str]]]:
    """(where, words) of every inline code span and every shell command line of a page."""
    for span in page.code_spans():
        try:
            yield f"`{span}`", shlex.split(span)
        except ValueError:
            yield f"`{span}`", span.split()
    for block in page.blocks:
        if block.language in SHELL_INFOS:
            for words in shell_commands(block):
                yield block.label, words


def commands(page: Page, name: str) -> Iterator[tuple[str, list[str]]]:
    """Arguments of each `name ...` command, or of `python -m name ...` for our modules."""
    for where, words in words_of(page):
        if name in ("worker", "bench"):
            if words[:1] and words[0] in PYTHONS and words[1:3] == ["-m", name]:
                yield where, words[3:]
        elif words[:1] == [name]:
            yield where, words[1:]


def command_problem(parser: Callable[[], object], argv: list[str]) -> str | None:
    """Why argv does not parse. Words without options (`python -m worker backfill` in prose)
    name a command: they only have to name one that exists."""
    problem = argparse_problem(parser, argv)
    if problem and not any(word.startswith("-") for word in argv):
        return argparse_problem(parser, [*argv, "--help"])
    return problem


def argparse_problem(parser: Callable[[], object], argv: list[str]) -> str | None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser().parse_args(argv)  # type: ignore[attr-defined]
    except SystemExit as exc:
        if exc.code not in (0, None):
            return (stderr.getvalue().strip().splitlines() or [f"exit {exc.code}"])[-1]
    return None


# Each check returns the problems it finds on one page, as "where: what" lines.


def path_problems(page: Page) -> list[str]:
    problems = []
    for where, words in words_of(page):
        for word in words:
            word = word.split("=", 1)[-1].rstrip(".,;:")
            first = word.split("/", 1)[0]
            if not _PATH.match(word) or first not in TOP_LEVEL:
                continue
            if "/" not in word and not (ROOT / word).is_file() and first not in GENERATED:
                continue  # a bare directory name is a word, not a path
            if word.rstrip("/").startswith(GENERATED):
                continue
            if "NNN" in word:  # a pattern such as sql/incremental/NNN-name.sql
                found = (ROOT / word.rsplit("/", 1)[0]).is_dir()
            elif "*" in word:
                found = any(ROOT.glob(word))
            else:
                found = (ROOT / word).exists()
            if not found:
                problems.append(f"{where}: {word} does not exist")
    return problems


def worker_command_problems(page: Page) -> list[str]:
    problems = []
    for where, argv in commands(page, "worker"):
        if argv and (problem := command_problem(worker_parser, argv)):
            problems.append(f"{where}: python -m worker {' '.join(argv)}: {problem}")
    for where, argv in commands(page, "bench"):
        if argv and (problem := command_problem(bench_parser, argv)):
            problems.append(f"{where}: python -m bench {' '.join(argv)}: {problem}")
    return problems


def make_problems(page: Page) -> list[str]:
    targets, variables = makefile()
    problems = []
    for where, args in commands(page, "make"):
        for arg in args:
            name, is_assignment, value = arg.partition("=")
            if not is_assignment:
                if name not in targets:
                    problems.append(f"{where}: make has no target {name!r}")
            elif name not in variables:
                problems.append(f"{where}: the Makefile has no variable {name}")
            elif name == "DEMO_ARGS" and (problem := argparse_problem(
                worker_parser, ["demo", *shlex.split(value)]
            )):  # fmt: skip
                problems.append(f"{where}: DEMO_ARGS={value!r}: {problem}")
    return problems


def celery_problems(page: Page) -> list[str]:
    from celery import Celery

    problems = []
    for where, args in commands(page, "celery"):
        if "-A" not in args[:-1]:
            problems.append(f"{where}: celery without -A APP")
            continue
        module = args[args.index("-A") + 1]
        app = getattr(importlib.import_module(module), "app", None)
        if not isinstance(app, Celery):
            problems.append(f"{where}: {module} has no Celery app")
        if not {"worker", "beat"} & set(args):
            problems.append(f"{where}: neither worker nor beat")
    return problems


def resolves(name: str) -> bool:
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                target = getattr(target, attribute)
        except AttributeError:
            return False
        return True
    return False


def name_problems(page: Page) -> list[str]:
    from worker.scheduling.app import app

    problems = []
    spans = page.code_spans()
    for span in spans:
        match = _WORKER_NAME.match(span)
        if match and not resolves(match.group(0)) and match.group(0) not in app.tasks:
            problems.append(f"`{span}`: {match.group(0)} is neither importable nor a task name")
    sql = "\n".join(p.read_text() for p in (ROOT / "sql").rglob("*.sql"))
    code = source_text()
    for span in spans:
        for name in _SQL_NAME.findall(span):
            if f"observability.{name}" not in sql and f"observability.{name}" not in code:
                problems.append(f"`{span}`: observability.{name} is defined nowhere")
    return problems


def variable_problems(page: Page) -> list[str]:
    names = {n for _, words in words_of(page) for w in words for n in _VARIABLE.findall(w)}
    for block in page.blocks:
        if block.language in SHELL_INFOS:
            names |= {n for n in assignments(block) if _VARIABLE.fullmatch(n)}
    code = source_text()
    missing = sorted(n for n in names - FOREIGN_VARIABLES if not re.search(rf"\b{n}\b", code))
    return [f"{name} is read nowhere in the project" for name in missing]


@cache
def prefixed_names() -> frozenset[str]:
    """The metric names worker/ declares, and the schemas the SQL creates, which share the
    observability_ prefix but are not metrics."""
    sources = [*(ROOT / "worker/monitoring").glob("*.py"), ROOT / "worker/rollups/metrics.py"]
    monitoring = "\n".join(p.read_text() for p in sources)
    declared = set(re.findall(r"[\"'](observability_[a-z_]+)[\"']", monitoring))
    sql = "\n".join(p.read_text() for p in (ROOT / "sql").rglob("*.sql"))
    schemas = set(re.findall(r"create schema (?:if not exists )?(observability_[a-z_]+)", sql))
    return frozenset(declared | schemas)


def metric_problems(page: Page) -> list[str]:
    known = prefixed_names()
    alerts = set(re.findall(r"alert:\s*(\w+)", (ROOT / "deploy/prometheus/alerts.yml").read_text()))
    problems = []
    for span in page.code_spans():
        if _METRIC.match(span) and span.removesuffix("_total") not in known:
            problems.append(f"`{span}`: no metric of that name in worker/")
        if _ALERT.match(span) and span not in alerts:
            problems.append(f"`{span}`: no such alert in deploy/prometheus/alerts.yml")
    return problems


def link_problems(page: Page) -> list[str]:
    problems = []
    for target in page.links():
        if re.match(r"^[a-z]+:", target):
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.path.parent / path_part).resolve() if path_part else page.path
        if not linked.exists():
            problems.append(f"link {target}: {path_part} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(parse(linked)):
            problems.append(f"link {target}: no heading #{anchor} in {linked.name}")
    return problems


def python_problems(page: Page) -> list[str]:
    problems = []
    for block in page.blocks:
        if block.language == "python":
            try:
                compile(block.text, block.label, "exec")
            except SyntaxError as exc:
                problems.append(f"{block.label}: {exc}")
    return problems


def fence_problems(page: Page) -> list[str]:
    return [
        f"{block.label}: unknown flags {block.info!r} (known: sql grafana, sql no-run)"
        for block in page.blocks
        if block.language == "sql" and not set(block.flags) <= {"grafana", "no-run"}
    ]


CHECKS = {
    "paths": path_problems,
    "worker and bench commands": worker_command_problems,
    "make targets": make_problems,
    "celery apps": celery_problems,
    "python and sql names": name_problems,
    "environment variables": variable_problems,
    "metrics and alerts": metric_problems,
    "links": link_problems,
    "python examples": python_problems,
    "sql fences": fence_problems,
}
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]


@pytest.mark.parametrize("check", CHECKS.values(), ids=CHECKS.keys())
@pytest.mark.parametrize("path", PAGES, ids=PAGE_IDS)
def test_docs_say_what_the_tree_has(path: Path, check: Callable[[Page], list[str]]) -> None:
    assert check(parse(path)) == []


def test_every_check_catches_what_it_is_for(tmp_path: Path) -> None:
    page = tmp_path / "bad.md"
    page.write_text(
        "See `worker/no_such_module.py`, `make no-such-target`, `worker.rollups.no_such_name`,\n"
        "`observability.no_such_view`, `OBSERVABILITY_NO_SUCH_SETTING`,\n"
        "`observability_no_such_metric` and `ObservabilityNoSuchAlert`; [gone](nowhere.md),\n"
        "[bad anchor](#nowhere).\n\n"
        "```sh\npython -m worker backfill --from yesterday --granularity hour\n"
        "python -m bench --no-such-option\npython -m worker no-such-command\n"
        "make demo DEMO_ARGS='--traces-per-hour 0'\n"
        "celery -A worker.settings worker\n```\n\n"
        "```python\ndef broken(:\n```\n\n```sql maybe\nselect 1;\n```\n"
    )
    bad = parse(page)
    expected = {
        "paths": 1, "worker and bench commands": 3, "make targets": 2, "celery apps": 1,
        "python and sql names": 2, "environment variables": 1, "metrics and alerts": 2,
        "links": 2, "python examples": 1, "sql fences": 1,
    }  # fmt: skip
    found = {name: check(bad) for name, check in CHECKS.items()}
    assert {name: len(problems) for name, problems in found.items()} == expected, found


def test_readme_is_short_and_links_every_page() -> None:
    readme = parse(README)
    assert len(README.read_text().splitlines()) < 150
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in readme.links()}
    unlinked = [p.name for p in sorted(DOCS_DIR.glob("*.md")) if p.resolve() not in linked]
    assert unlinked == [], f"pages the README does not link to: {unlinked}"


def test_readme_shows_the_commands_ci_and_newcomers_run() -> None:
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines() if line.strip()]
    ci_command = ci[-1]
    assert ci_command.startswith("make ")
    first_shell_block = next(b for b in parse(README).blocks if b.language in SHELL_INFOS)
    shown = [" ".join(words) for words in shell_commands(first_shell_block)]
    assert ci_command in shown and "make demo" in shown, shown
