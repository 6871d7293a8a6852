"""Backup freshness and drill results as Prometheus metrics (the text exposition format): the one
module that owns that format. Facts are read from the store (the sets, their sealed manifests and
verification records), so the metrics say what is restorable, not what a run reported.

Alert rules on these metrics ship in infra/prometheus/sentry-ops.rules.yml (checked and unit
tested with promtool)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from blocks import backup_set, wal_archive
from blocks.backup_store import BackupStore

PREFIX = "sentry_ops_"


@dataclass(frozen=True)
class HostFacts:
    """What the store says about one host's backups."""

    host_id: str
    host: str  # the SentryHost block's name in the newest set's manifest
    sets: dict[str, int]  # set_state -> count
    last_finished: dt.datetime | None = None  # the newest complete, trusted full set
    last_started: dt.datetime | None = None
    last_bytes: int | None = None
    last_verified: dt.datetime | None = None  # newest successful verification of any set
    drill_at: dt.datetime | None = None  # the newest drill's record
    drill_ok: bool | None = None
    drill_rto: float | None = None
    wal_mark: dt.datetime | None = None  # newest point the WAL archive surely holds
    wal_shipped: dt.datetime | None = None
    wal_segments: int | None = None
    wal_slot_bytes: int | None = None


def set_state(listing: backup_set.SetListing) -> str:
    """A label value: verified, complete (not verified), incomplete (no manifest), untrusted."""
    if not listing.complete:
        return "incomplete"
    if not listing.trusted:
        return "untrusted"
    return "verified" if listing.verified else "complete"


def read_facts(store: BackupStore) -> list[HostFacts]:
    """One HostFacts per host folder of the store (listing, then the newest set's manifest and
    each set's verification record, all seal-checked). A folder an older release filed under
    the SSH target counts as the host its newest manifest names by engine (not as a host
    whose backups stopped)."""
    hosts = backup_set.by_host(store, backup_set.list_sets(store))
    facts = []
    for host_id, sets in sorted(hosts.items()):
        counts = dict(Counter(set_state(s) for s in sets))
        fields: dict = {"host_id": host_id, "host": "", "sets": counts}
        try:
            chosen: str | None = backup_set.choose(sets, None)
        except backup_set.SetError:  # no complete, sealed full set yet
            chosen = None
        if chosen:
            newest = backup_set.load_listed(store, sets, chosen)
            fields.update(
                host=newest.host,
                last_finished=newest.finished_at,
                last_started=newest.started_at,
                last_bytes=sum(o.size for o in newest.objects),
            )
        records = [
            r
            for s in sets
            if s.trusted and (r := backup_set.read_verification(store, s.host_id, s.backup_id))
        ]
        passed = [r.at for r in records if r.ok]
        drills = sorted((r for r in records if r.by == "restore-drill"), key=lambda r: r.at)
        if passed:
            fields["last_verified"] = max(passed)
        if drills:
            fields.update(
                drill_at=drills[-1].at, drill_ok=drills[-1].ok, drill_rto=drills[-1].rto_seconds
            )
        if head := wal_archive.newest_head(store, host_id):
            fields.update(
                wal_mark=head.newest_mark,
                wal_shipped=head.shipped_at,
                wal_segments=head.segments,
                wal_slot_bytes=head.slot_retained_bytes,
            )
        facts.append(HostFacts(**fields))
    return facts


class _Facts:
    def __init__(self, facts: list[HostFacts], store: str, now: dt.datetime) -> None:
        self.facts, self.store, self.now = facts, store, now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["host_id", "host", "store"]

        def family(name: str, doc: str, values: list[tuple[HostFacts, float | None]]):
            metric = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
            for f, value in values:
                if value is not None:
                    metric.add_metric([f.host_id, f.host, self.store], value)
            return metric

        def ts(when: dt.datetime | None) -> float | None:
            return when.timestamp() if when else None

        fs = self.facts
        yield family(
            "backup_last_success_timestamp_seconds",
            "When the newest complete, sealed full backup set finished (unix time)",
            [(f, ts(f.last_finished)) for f in fs],
        )
        yield family(
            "backup_last_duration_seconds",
            "How long the newest complete backup took, start to manifest",
            [
                (
                    f,
                    (f.last_finished - f.last_started).total_seconds()
                    if f.last_started and f.last_finished
                    else None,
                )
                for f in fs
            ],
        )
        yield family(
            "backup_last_size_bytes",
            "Bytes of the newest complete backup set (every object of its manifest)",
            [(f, f.last_bytes) for f in fs],
        )
        yield family(
            "backup_last_verified_timestamp_seconds",
            "When a set of this host last passed verification (verify-backup or a drill)",
            [(f, ts(f.last_verified)) for f in fs],
        )
        yield family(
            "drill_last_timestamp_seconds",
            "When the newest restore drill of this host's backups ended",
            [(f, ts(f.drill_at)) for f in fs],
        )
        yield family(
            "drill_last_success",
            "1 if the newest restore drill passed, 0 if it failed",
            [(f, None if f.drill_ok is None else float(f.drill_ok)) for f in fs],
        )
        yield family(
            "drill_last_rto_seconds",
            "Recovery time of the newest restore drill: restore start to a checked, healthy stack",
            [(f, f.drill_rto) for f in fs],
        )
        yield family(
            "wal_last_mark_timestamp_seconds",
            "The newest moment the WAL archive surely holds (a restore reaches it): shipping lag "
            "is now minus this",
            [(f, ts(f.wal_mark)) for f in fs],
        )
        yield family(
            "wal_last_shipped_timestamp_seconds",
            "When ship-wal last shipped this host's WAL",
            [(f, ts(f.wal_shipped)) for f in fs],
        )
        yield family(
            "wal_segments", "WAL segments in the archive of the host's current cluster",
            [(f, f.wal_segments) for f in fs],
        )  # fmt: skip
        yield family(
            "wal_slot_retained_bytes",
            "WAL the host's replication slot kept at the last shipping (grows while the "
            "shipper is down)",
            [(f, f.wal_slot_bytes) for f in fs],
        )
        sets = GaugeMetricFamily(
            PREFIX + "backup_sets", "Backup sets in the store by status", labels=[*labels, "status"]
        )
        for f in fs:
            for status, n in sorted(f.sets.items()):
                sets.add_metric([f.host_id, f.host, self.store, status], n)
        yield sets
        yield GaugeMetricFamily(
            PREFIX + "metrics_generated_timestamp_seconds",
            "When these metrics were read from the store (an exporter that stopped shows here)",
            value=self.now.timestamp(),
        )


def render(facts: list[HostFacts], store: str, now: dt.datetime) -> str:
    """The Prometheus text exposition format of the facts."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Facts(facts, store, now))  # type: ignore[arg-type]
    return generate_latest(registry).decode()
