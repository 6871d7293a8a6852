"""The project's rule, checked on the code: flows orchestrate, blocks do the work.

A file in flows/ reads as a runbook of named steps: it builds no remote command (argv lists,
`*_argv` calls, the transport's own `run`/`stream`/`compose`/`git`), writes no SQL, YAML or
`.env` text, and imports from another flow module only flows (called as subflows); what flows
share lives in flows/shared.py or below, in blocks/. The folders keep their one-way order:
infra -> deployments -> flows -> blocks, and nothing reads outside the repository.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]
FLOWS = sorted(p for p in (ROOT / "flows").glob("*.py") if p.name != "__init__.py")
COMMAND_WORDS = {"docker", "compose", "git", "sh", "bash", "tar", "psql", "pg_dump", "pg_restore",
                 "sentry", "redis-cli", "clickhouse-client", "df", "rm", "mkdir", "ss", "sqlite3",
                 "zstd", "cat", "wget", "curl"}  # fmt: skip
FORBIDDEN_MODULES = {"yaml", "shlex", "subprocess", "json", "paramiko", "psycopg", "boto3",
                     "clickhouse_connect", "blocks.dotenv", "blocks.commands"}  # fmt: skip
TRANSPORT = {"run", "stream", "compose", "git", "tunnel"}  # SentryHost's raw I/O
# statements, not the names of checks ("VACUUM (ANALYZE)", "SELECT 1" label results)
SQL = re.compile(
    r"^\s*(SELECT\s.*\bFROM\s|INSERT\s+INTO\s|ALTER\s+TABLE\s+[\w`\"]|CREATE\s+(TABLE|DATABASE)\s"
    r"|DROP\s+(TABLE|DATABASE)\s|DELETE\s+FROM\s|UPDATE\s+\S+\s+SET\s|TRUNCATE\s)",
    re.S,
)
LAYERS = ["blocks", "flows", "deployments", "infra"]  # each may import only those before it


def problems_in(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def say(node: ast.AST, what: str) -> None:
        found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in FORBIDDEN_MODULES:
                    say(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in FORBIDDEN_MODULES or (
                node.module == "blocks" and {a.name for a in node.names} & {"dotenv", "commands"}
            ):
                say(node, f"imports from {node.module}")
            if node.module == "blocks.ssh":  # its errors are fine to catch; its transport is not
                for alias in node.names:
                    if not alias.name.endswith("Error"):
                        say(node, f"imports {alias.name} from blocks.ssh")
            if node.module.startswith("flows.") and node.module != "flows.shared":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not isinstance(getattr(module, alias.name, None), Flow):
                        say(node, f"imports {alias.name}, not a flow, from {node.module}")
        elif isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) >= 2:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and first.value in COMMAND_WORDS:
                say(node, f"builds a command ({first.value!r} ...)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name.endswith("_argv"):
                say(node, f"calls {name}")
            base = node.func.value
            if name in TRANSPORT and not (isinstance(base, ast.Name) and base.id == "jobs"):
                say(node, f"calls the transport's {name}")
            for kw in node.keywords:
                if kw.arg == "stdin" and isinstance(kw.value, ast.Constant):
                    say(node, "passes a literal stdin (the transport's convention)")
        elif isinstance(node, ast.Attribute) and node.attr == "transport":
            say(node, "reaches into the SSH transport")
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value)
        ):
            say(node, f"holds SQL: {node.value[:40]!r}")
    return found


@pytest.mark.parametrize("path", FLOWS, ids=lambda p: p.name)
def test_flows_build_no_commands_and_import_only_flows(path: Path) -> None:
    assert problems_in(path) == []


def test_the_check_finds_what_it_forbids(tmp_path: Path) -> None:
    """The rule can fail: a flow file doing a block's work is caught on every count."""
    bad = ROOT / "flows" / "_structure_probe.py"
    bad.write_text(
        "import yaml\n"
        "from flows.backup import preflight\n"
        "def step(host):\n"
        "    host.run(['docker', 'ps'], stdin=b'\\n')\n"
        "    host.compose_argv('ps')\n"
        "    return 'SELECT count(*) FROM sentry_project'\n"
    )
    try:
        found = "\n".join(problems_in(bad))
    finally:
        bad.unlink()
    for what in ("imports yaml", "preflight, not a flow", "builds a command", "transport's run",
                 "literal stdin", "calls compose_argv", "holds SQL"):  # fmt: skip
        assert what in found, found


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_downwards(layer: str) -> None:
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    bad = {
        str(p.relative_to(ROOT)): sorted(imports_of(p) & above)
        for p in (ROOT / layer).rglob("*.py")
        if imports_of(p) & above
    }
    assert bad == {}


def test_nothing_reads_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|\bshared/(bench|hooks)|(DESIGN|TESTBED|LAYOUTS)\.md")
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for folder in ("blocks", "flows", "deployments", "infra", "tests")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".sh", ".yml", ".yaml", ".toml", ".sql") and p != Path(__file__)
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert hits == []
