"""The one module that owns ClickHouse in and out: snapshot (FREEZE), restore (ATTACH), checks.

ClickHouse is reached with clickhouse-connect through an SSH tunnel to the container's own
address (self-hosted publishes no port). A snapshot, per MergeTree-family table of the database:
merges stopped, `ALTER TABLE ... FREEZE WITH NAME '<backup id>'` (hard links of the table's parts
under `shadow/<name>/`), the frozen parts listed from the volume, their rows counted and
checksummed (`sum(cityHash64(*))` over `_part IN (frozen parts)`: parts are immutable and merges
are stopped, so these are exactly the frozen rows), merges started again. The frozen folder is
then streamed as one zstd tar from the volume by the caller, and always removed afterwards
(`SYSTEM UNFREEZE` where the server has it, and the folder itself), on failure too.
Other tables (views, Kafka engines, dictionaries, ...) are recorded with their DDL and why they
were not copied. A restore creates the database and tables from the recorded DDL, moves the parts
into each table's `detached/` and `ALTER TABLE ... ATTACH PART`s them, then compares rows and
checksums with the manifest.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from blocks.backup_set import CLICKHOUSE_NAME, ClickHouseSnapshot, ClickHouseTable
from blocks.layouts import DataVolume, Role
from blocks.sentry_host import SentryHost
from blocks.ssh import RemoteCommandError

# Engines whose data FREEZE copies (the MergeTree family, replicated or not)
MERGETREE = re.compile(r"^(Replicated)?\w*MergeTree$")
# Engines with no data of their own: recreated from their DDL, never copied
FROM_DDL = {
    "View": "a view: recreated from its DDL, it has no data of its own",
    "MaterializedView": "a materialized view: recreated from its DDL; its rows are in its "
    "target (or .inner) table, which is copied",
    "Kafka": "a Kafka consumer table: recreated from its DDL; its data is in Kafka",
    "Distributed": "a Distributed table: recreated from its DDL; its data is in local tables",
    "Dictionary": "a dictionary: recreated from its DDL and reloaded from its source",
    "Null": "a Null table: holds no data",
    "Merge": "a Merge table: reads other tables, holds no data",
    "Buffer": "a Buffer table: flushed to its target table, which is copied",
}
# Engines a restore does not recreate, though their DDL is kept: in a drill they would reach
# production (a Kafka consumer reading its topic, a Distributed table its shards); a rollback
# leaves production's own in place (drop_tables skips them too)
NOT_RECREATED = {
    "Kafka": "a Kafka consumer table: not recreated (it would read production's topic)",
    "Distributed": "a Distributed table: not recreated (it would reach production's shards)",
}
VIEWS = ("View", "MaterializedView")
SAFE_NAME = CLICKHOUSE_NAME  # what a manifest may carry is what we quote
MERGES_DEADLINE = 900  # s: the host restarts merges by itself after this, whatever happened


class ClickHouseError(Exception):
    pass


class Client(Protocol):
    def rows(self, sql: str) -> list[tuple]: ...
    def command(self, sql: str) -> None: ...


class ModernClient:
    """clickhouse-connect: the default, for the ClickHouse that Sentry ships (23.8 and later)."""

    def __init__(self, port: int) -> None:
        import clickhouse_connect

        self.client = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="default")

    def rows(self, sql: str) -> list[tuple]:
        return [tuple(r) for r in self.client.query(sql).result_rows]

    def command(self, sql: str) -> None:
        self.client.command(sql)


class LegacyHTTPClient:
    """COMPATIBILITY ONLY, for ClickHouse < 20 (the sandbox's 18.16): clickhouse-connect's
    start-up query reads system.settings.readonly, a column 18.16 lacks, so it cannot connect.
    Plain HTTP with JSONCompact results; 64-bit integers arrive as text."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"

    def _post(self, sql: str) -> bytes:
        request = urllib.request.Request(self.url, data=sql.encode())
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise ClickHouseError(exc.read().decode("utf-8", "replace")[:1000]) from None

    def rows(self, sql: str) -> list[tuple]:
        return [tuple(r) for r in json.loads(self._post(f"{sql} FORMAT JSONCompact"))["data"]]

    def command(self, sql: str) -> None:
        self._post(sql)


def server_version(port: int) -> str:
    """`SELECT version()` over plain HTTP: answers on every ClickHouse version."""
    url = f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode({"query": "SELECT version()"})
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode().strip()


@contextlib.contextmanager
def connect(host: SentryHost) -> Iterator[tuple[Client, str]]:
    """(client, server version) of the host's ClickHouse, through an SSH tunnel."""
    try:
        address = host.container_address(Role.CLICKHOUSE)
    except RemoteCommandError as exc:
        raise ClickHouseError(
            f"{host.label}: ClickHouse ({host.stack.service(Role.CLICKHOUSE)}) is not running: "
            f"{exc}; start it (`docker compose up -d` of the stack)"
        ) from None
    with host.tunnel(host.clickhouse_http_port, address) as port:
        try:
            version = server_version(port)
        except OSError as exc:
            raise ClickHouseError(
                f"{host.label}: ClickHouse does not answer on {address}:"
                f"{host.clickhouse_http_port} (clickhouse_http_port of the block): {exc}"
            ) from None
        major = int(version.split(".")[0])
        yield (ModernClient(port) if major >= 20 else LegacyHTTPClient(port)), version


def names_in(client: Client, database: str) -> set[str]:
    """The names of the tables and views in `database`."""
    return {r[0] for r in client.rows(f"SELECT name FROM system.tables WHERE database = "
                                      f"'{database}'")}  # fmt: skip


def table_names(host: SentryHost) -> set[str]:
    """The names of the tables and views in the stack's ClickHouse database."""
    with connect(host) as (client, _):
        return names_in(client, host.stack.clickhouse_database)


def ping(host: SentryHost) -> str:
    """ClickHouse answers a query; its version."""
    with connect(host) as (client, version):
        client.rows("SELECT 1")
    return version


def quoted(database: str, table: str) -> str:
    for name in (database, table):
        if not SAFE_NAME.match(name):
            raise ClickHouseError(f"refusing a ClickHouse name with unusual characters: {name!r}")
    return f"`{database}`.`{table}`"


def relative_data_path(path: str) -> str:
    """A table's data folder relative to ClickHouse's data directory (`data/db/t/`, or
    `store/abc/<uuid>/` for Atomic databases), as FREEZE mirrors it under shadow/<name>/."""
    match = re.search(r"(?:^|/)((?:data|store)/.+?)/?$", path)
    if not match:
        raise ClickHouseError(f"cannot place the data path {path!r} inside ClickHouse's data dir")
    return match.group(1).rstrip("/") + "/"


def path_column(client: Client) -> str:
    """system.tables' data folder column: data_paths (19.x+, Atomic databases), else data_path."""
    columns = {r[0] for r in client.rows(
        "SELECT name FROM system.columns WHERE database = 'system' AND table = 'tables'"
    )}  # fmt: skip
    return "data_paths[1]" if "data_paths" in columns else "data_path"


def list_tables(client: Client, database: str) -> list[ClickHouseTable]:
    """Every table of `database`: MergeTree ones to copy, others with why they are not."""
    if not SAFE_NAME.match(database):
        raise ClickHouseError(f"refusing ClickHouse database name {database!r}")
    rows = client.rows(
        f"SELECT name, engine, create_table_query, {path_column(client)} FROM system.tables "
        f"WHERE database = '{database}' AND NOT is_temporary ORDER BY name"
    )
    tables = []
    for name, engine, create, data_path in rows:
        copied, why = classify(engine)
        tables.append(ClickHouseTable(
            database=database, name=name, engine=engine, create=create, copied=copied, why=why,
            data_path=relative_data_path(data_path) if copied else None,
        ))  # fmt: skip
    return tables


def classify(engine: str) -> tuple[bool, str]:
    """(copied, how or why not) for a table engine."""
    if MERGETREE.match(engine):
        return True, "merges stopped, FREEZE, rows of the frozen parts counted"
    return False, FROM_DDL.get(engine, f"UNKNOWN ENGINE {engine}: not copied, only its DDL kept")


def newest_event(client: Client, database: str, parts: Sequence[str] | None = None) -> str | None:
    """max(timestamp) of Snuba's errors table (of some of its parts), if the database has it."""
    if "errors_local" not in names_in(client, database):
        return None
    if parts is not None and not parts:
        return None
    value = client.rows(
        f"SELECT count(), toString(max(timestamp)) FROM {quoted(database, 'errors_local')}"
        + in_parts(parts)
    )
    return str(value[0][1]) if value and int(value[0][0]) else None  # empty: no newest


def newest_event_id(client: Client, database: str, parts: Sequence[str]) -> str | None:
    """The event id of the newest row of Snuba's errors table among `parts`."""
    if not parts:
        return None
    # an aggregate, not ORDER BY ... LIMIT 1: ClickHouse 26.5's top-K filter mistypes that
    # query over errors_local ("Type mismatch in IN or VALUES section. Expected: DateTime. Got:
    # UUID", tried); argMax over (timestamp, event_id) picks the same row on every version
    rows = client.rows(
        "SELECT count(), toString(argMax(event_id, (timestamp, event_id))) FROM "
        f"{quoted(database, 'errors_local')}{in_parts(parts)}"
    )
    return str(rows[0][1]).replace("-", "") if rows and int(rows[0][0]) else None


def in_parts(parts: Sequence[str] | None) -> str:
    """A WHERE clause keeping the rows of some parts (part names are ClickHouse's own)."""
    return "" if parts is None else " WHERE _part IN (" + ", ".join(f"'{p}'" for p in parts) + ")"


def checksum_expression(columns: Sequence[Sequence[str]]) -> str:
    """`sum(cityHash64(...))` over the columns `SELECT *` reads ((name, type, default kind) rows
    of DESCRIBE TABLE; MATERIALIZED, ALIAS and EPHEMERAL ones left out, as `*` does), in order,
    so a table without aggregate states or Nullable columns hashes exactly as `cityHash64(*)`.
    An aggregate state (Snuba's AggregatingMergeTree tables) is hashed by its finalized value:
    ClickHouse 18.16 refuses cityHash64 of a state (tried), and finalizeAggregation gives the
    same figure on the backup's and the restore's server of one version. A Nullable column, and
    a state whose final value may be NULL (Snuba's `anyIf(Nullable(String), ...)`), is hashed
    as whether it is NULL and its value: cityHash64 is NULL when any argument is (every row of
    Snuba's errors_local has NULL columns: its sum was NULL, tried on 26.9), and 18.16 refuses
    a Nullable inside a tuple; `isNull(c), assumeNotNull(c)` gives one figure on both (tried)."""
    hashed = []
    for name, type_, kind, *_ in columns:
        if kind in ("MATERIALIZED", "ALIAS", "EPHEMERAL"):
            continue
        column = "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
        state = type_.startswith("AggregateFunction(")  # its final value may be Nullable
        value = f"finalizeAggregation({column})" if state else column
        if state or type_.startswith(("Nullable(", "LowCardinality(Nullable(")):
            hashed += [f"isNull({value})", f"assumeNotNull({value})"]
        else:
            hashed.append(value)
    return f"toString(sum(cityHash64({', '.join(hashed)})))"


def count_rows(client: Client, table: ClickHouseTable, parts: Sequence[str] | None) -> tuple:
    """(rows, checksum as text) of a table, or of some of its parts."""
    if parts is not None and not parts:
        return 0, "0"
    name = quoted(table.database, table.name)
    checksum = checksum_expression(client.rows(f"DESCRIBE TABLE {name}"))
    row = client.rows(f"SELECT count(), {checksum} FROM {name}{in_parts(parts)}")[0]
    if row[1] is None:  # a sum with NULL terms: not a checksum of the rows
        raise ClickHouseError(f"the checksum of {name} came back NULL: a column type sentry-ops "
                              "cannot hash; report it with the table's DESCRIBE")  # fmt: skip
    return int(row[0]), str(row[1])


def count_tables(
    client: Client, database: str, tables: Sequence[ClickHouseTable]
) -> dict[str, tuple[int, str]]:
    """(rows, checksum) of each table's `parts`, as `count_rows` gives them, in two queries
    whatever the number of tables (a snapshot holds merges stopped meanwhile): the columns of
    all from system.columns (DESCRIBE's name, type and default kind), then one UNION ALL."""
    wanted = [t for t in tables if t.parts]
    if not wanted:
        return {t.name: (0, "0") for t in tables}
    names = ", ".join(f"'{t.name}'" for t in wanted)
    quoted(database, "system")  # the names are checked before they go into SQL
    columns: dict[str, list[tuple]] = {}
    for table, *column in client.rows(
        "SELECT table, name, type, default_kind FROM system.columns "
        f"WHERE database = '{database}' AND table IN ({names}) ORDER BY table, position"
    ):
        columns.setdefault(str(table), []).append(tuple(column))
    selects = [
        f"SELECT '{t.name}', count(), {checksum_expression(columns[t.name])} "
        f"FROM {quoted(database, t.name)}{in_parts(t.parts)}"
        for t in wanted
    ]
    found = {str(name): (int(rows), checksum) for name, rows, checksum in
             client.rows(" UNION ALL ".join(selects))}  # fmt: skip
    for name, (_, checksum) in found.items():
        if checksum is None:  # a sum with NULL terms: not a checksum of the rows
            raise ClickHouseError(
                f"the checksum of {database}.{name} came back NULL: a column type sentry-ops "
                "cannot hash; report it with the table's DESCRIBE"
            )
    return {t.name: (found[t.name][0], str(found[t.name][1])) if t.parts else (0, "0")
            for t in tables}  # fmt: skip


def freeze_name(backup_id: str) -> str:
    """FREEZE WITH NAME escapes anything but [A-Za-z0-9_] in the folder it makes (`-` becomes
    `%2D`): a name that needs no escaping, so the folder is where we look for it."""
    return re.sub(r"[^A-Za-z0-9_]", "_", backup_id)


def shadow_path(name: str) -> str:
    """Where FREEZE WITH NAME puts the copy, relative to the ClickHouse volume."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ClickHouseError(f"refusing a freeze name with unusual characters: {name!r}")
    return f"shadow/{name}"


def frozen_parts(host: SentryHost, image: str, name: str) -> dict[str, list[str]]:
    """data path (relative) -> part names found under shadow/<name>/ of the volume."""
    # no folder: every table was empty (FREEZE of a table without parts makes none)
    listing = '[ -d "$0" ] || exit 0; exec find "$0" -mindepth 1 -name checksums.txt'
    argv = host.volume_run_argv(
        DataVolume.CLICKHOUSE, image, "sh", "-c", listing, f"/volume/{shadow_path(name)}"
    )
    parts: dict[str, list[str]] = {}
    prefix = f"/volume/{shadow_path(name)}/"
    for line in host.run(argv, timeout=300).text.splitlines():
        part_dir = posixpath.dirname(line.strip()).removeprefix(prefix)
        table_dir, part = posixpath.split(part_dir)
        parts.setdefault(table_dir + "/", []).append(part)
    return {k: sorted(v) for k, v in parts.items()}


def freeze(host: SentryHost, client: Client, version: str, name: str) -> ClickHouseSnapshot:
    """Freeze every MergeTree table of the host's database under shadow/<name>/ and record
    what was frozen. The caller streams shadow/<name> and then calls `unfreeze`."""
    database = host.stack.clickhouse_database
    tables = list_tables(client, database)
    copied = [t for t in tables if t.copied]
    # copies left by killed earlier runs of this host's backups (the caller holds the host
    # lock, so none of them is still in use); one of this very name would make FREEZE fail
    hosts = "|".join(freeze_name(h) for h in host.set_folders)
    ours = re.compile(rf"\d{{8}}T\d{{6}}Z_({hosts})")
    for stale in (n for n in leftover_freezes(host) if ours.fullmatch(n) or n == name):
        unfreeze(host, stale, client)
    # merges are stopped only from FREEZE to the counts (seconds)
    with merges_stopped(host, client, copied):
        for table in copied:
            client.command(
                f"ALTER TABLE {quoted(table.database, table.name)} FREEZE WITH NAME '{name}'"
            )
        found = frozen_parts(host, host.tool_image, name) if copied else {}
        for table in copied:
            table.parts = found.get(table.data_path or "", [])
        counted = count_tables(client, database, copied)
        for table in copied:
            table.rows, table.checksum = counted[table.name]
        errors = next((t for t in copied if t.name == "errors_local"), None)
        newest = newest_event(client, database, errors.parts) if errors else None
        newest_id = newest_event_id(client, database, errors.parts) if errors else None
    return ClickHouseSnapshot(
        version=version, database=database, freeze_name=name, tables=tables,
        newest_event=newest, newest_event_id=newest_id,
    )  # fmt: skip


@contextlib.contextmanager
def merges_stopped(host: SentryHost, client: Client, tables: Sequence[ClickHouseTable]):
    """Merges stopped for the block (server-wide, one statement each way: the server is the
    stack's own) when there are `tables` to hold still, so their parts stay as they are and
    counts over them hold (a Replacing or Summing table's merge changes its rows); should this
    process die meanwhile, the host itself starts them again after MERGES_DEADLINE (ClickHouse
    would keep them stopped)."""
    if not tables:
        yield
        return
    port = str(host.clickhouse_port)
    start = host.exec_argv(
        Role.CLICKHOUSE, "clickhouse-client", "--port", port, "--query", "SYSTEM START MERGES"
    )
    host.run(host.later_argv(MERGES_DEADLINE, start), timeout=30)
    client.command("SYSTEM STOP MERGES")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            client.command("SYSTEM START MERGES")


def unfreeze(host: SentryHost, name: str, client: Client | None = None) -> None:
    """Remove the frozen copy `name`: SYSTEM UNFREEZE where supported (22.x+), then the folder
    itself (the only way on older servers; harmless after UNFREEZE)."""
    if client is not None:
        with contextlib.suppress(Exception):
            client.command(f"SYSTEM UNFREEZE WITH NAME '{name}'")
    # then `shadow/` itself when empty: a restore's staging made it as root (the tool image's
    # tar), and ClickHouse (its own user) could not FREEZE into it afterwards: "Access to file
    # denied" on the next backup of a restored host; ClickHouse makes it anew as itself
    script = 'rm -rf -- "$0" || exit 1; rmdir /volume/shadow 2>/dev/null; exit 0'
    host.run(
        host.volume_run_argv(DataVolume.CLICKHOUSE, host.tool_image, "sh", "-c", script,
                             f"/volume/{shadow_path(name)}"),
        timeout=300,
    )  # fmt: skip


def leftover_freezes(host: SentryHost) -> list[str]:
    """Names under shadow/ of the host's ClickHouse volume (frozen copies not removed)."""
    return sorted(f.name for f in frozen_copies(host))


@dataclass(frozen=True)
class Frozen:
    name: str
    mtime: float  # epoch seconds of the folder
    bytes: int


def frozen_copies(host: SentryHost) -> list[Frozen]:
    """Each folder under shadow/ of the host's ClickHouse volume, with its age and size."""
    # only folders: ClickHouse keeps its FREEZE counter, shadow/increment.txt, beside them
    # (ClickHouse/ClickHouse src/Storages/MergeTree/MergeTreeData.cpp, freezePartitionsByMatcher)
    script = (
        '[ -d /volume/shadow ] || exit 0; cd /volume/shadow && for d in *; do [ -d "$d" ] || '
        'continue; echo "$d $(stat -c %Y "$d") $(du -sb "$d" | cut -f1)"; done'
    )
    argv = host.volume_run_argv(DataVolume.CLICKHOUSE, host.tool_image, "sh", "-c", script)
    rows = [line.split() for line in host.run(argv, timeout=300).text.splitlines()]
    return [Frozen(n, float(m), int(b)) for n, m, b in rows]


def table_bytes(client: Client, database: str) -> dict[str, int]:
    """Bytes on disk of each table's active parts."""
    rows = client.rows(
        "SELECT table, sum(bytes_on_disk) FROM system.parts WHERE active AND database = "
        f"'{database}' GROUP BY table ORDER BY 2 DESC"
    )
    return {str(t): int(b) for t, b in rows}


# -- restore --------------------------------------------------------------------------------------
def create_tables(client: Client, snapshot: ClickHouseSnapshot) -> None:
    """The snapshot's database and tables from their DDL in an (empty) ClickHouse, each before
    what reads it (`recreated`)."""
    client.command(f"CREATE DATABASE IF NOT EXISTS `{snapshot.database}`")
    for table in recreated(snapshot):
        create = re.sub(r"^CREATE (TABLE|VIEW|MATERIALIZED VIEW|DICTIONARY) ",
                        r"CREATE \1 IF NOT EXISTS ", table.create, count=1)  # fmt: skip
        client.command(create)


def attach_parts(host: SentryHost, client: Client, snapshot: ClickHouseSnapshot, staged: str):
    """The parts unpacked under `staged` (relative to the volume) moved into each created
    table's detached/ and attached part by part; a table that has rows already is refused."""
    for table in (t for t in snapshot.tables if t.copied):
        rows, _ = count_rows(client, table, None)
        if rows:
            raise ClickHouseError(
                f"{host.label}: {table.database}.{table.name} already has {rows} rows; a restore "
                "goes into an empty ClickHouse"
            )
        if not table.parts:
            continue
        target = client.rows(
            f"SELECT {path_column(client)} FROM system.tables "
            f"WHERE database = '{table.database}' AND name = '{table.name}'"
        )[0][0]
        source = posixpath.join("/volume", staged, table.data_path or "")
        detached = posixpath.join("/volume", relative_data_path(target), "detached")
        move = 'mkdir -p "$1" && for p in "$0"/*; do mv "$p" "$1"/; done'
        argv = host.volume_run_argv(DataVolume.CLICKHOUSE, host.tool_image, "sh", "-c", move,
                                    source, detached)  # fmt: skip
        host.run(argv, timeout=600)
        for part in table.parts:
            client.command(f"ALTER TABLE {quoted(table.database, table.name)} ATTACH PART '{part}'")


def recreated(snapshot: ClickHouseSnapshot) -> list[ClickHouseTable]:
    """The tables a restore creates, in an order where each exists before what reads it: the
    copied (MergeTree) tables, then the other engines (Merge, Null, Buffer, Dictionary: Snuba's
    `discover_local` reads errors_local and transactions_local), then views and materialized
    views (a `TO` target must exist). NOT_RECREATED engines are left out."""
    known = [t for t in snapshot.tables if t.copied or t.engine in FROM_DDL]
    tables = [t for t in known if t.engine not in NOT_RECREATED]
    data = [t for t in tables if t.copied]
    views = [t for t in tables if not t.copied and t.engine in VIEWS]
    return data + [t for t in tables if t not in data and t not in views] + views


def drop_tables(client: Client, snapshot: ClickHouseSnapshot) -> None:
    """Drop what `restore` recreates (readers first) so it can put the snapshot back."""
    for table in reversed(recreated(snapshot)):
        client.command(f"DROP TABLE IF EXISTS {quoted(table.database, table.name)}")


def compare(client: Client, snapshot: ClickHouseSnapshot) -> list[tuple[str, bool, str]]:
    """(table, equal, detail) per table: a copied one's rows and checksum against the manifest;
    one recreated from its DDL (a Merge table, a view) must exist; one left out says why."""
    out = []
    quoted(snapshot.database, "system")  # the name checked before it goes into SQL
    listed = client.rows(f"SELECT name FROM system.tables WHERE database = '{snapshot.database}'")
    existing = {str(r[0]) for r in listed}
    made = {t.name for t in recreated(snapshot)}
    for table in (t for t in snapshot.tables if not t.copied):
        if table.name not in made:  # left out on purpose, or an engine without a rule
            out.append((table.name, True, NOT_RECREATED.get(table.engine, table.why)))
        else:
            there = table.name in existing
            out.append((table.name, there, f"{table.engine} recreated from its DDL"
                        if there else f"{table.engine} MISSING after the restore"))  # fmt: skip
    for table in (t for t in snapshot.tables if t.copied):
        try:
            rows, checksum = count_rows(client, table, None)
        except Exception as exc:  # reported per table
            out.append((table.name, False, f"{exc.__class__.__name__}: {exc}"[:300]))
            continue
        same = "equal" if checksum == table.checksum else "DIFFERS"
        ok = rows == table.rows and checksum == table.checksum
        out.append((table.name, ok, f"{rows} rows (backup {table.rows}), checksum {same}"))
    return out
