"""Backup freshness and drill results of a store as Prometheus metrics.

Read from the store itself (sealed manifests and verification records), rendered in the text
exposition format, written atomically to a file for node_exporter's textfile collector (the usual
way a batch job's metrics reach Prometheus) and kept as an artifact. Alert rules for them:
infra/prometheus/sentry-ops.rules.yml.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks import metrics
from blocks.backup_store import BackupStore
from flows.shared import MINUTE, artifact_slug, load_block


def write_atomically(path: Path, text: str) -> None:
    """A scraper never reads a half-written file: a temp file beside it, then a rename."""
    if not path.is_absolute():
        raise ValueError(f"textfile: {path} is not an absolute path; name the collector's file")
    if not path.parent.is_dir():
        raise ValueError(
            f"textfile: {path.parent} does not exist on this worker; create it or point "
            "textfile at node_exporter's --collector.textfile.directory"
        )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@flow(
    name="backup-metrics",
    flow_run_name="backup-metrics-{store}",
    persist_result=True,
    timeout_seconds=15 * MINUTE,
)
def backup_metrics(store: BackupStore | str, textfile: str | None = None) -> str:
    """Read every host's backup freshness, size, duration, verification and drill results (RTO)
    from the store and render them as Prometheus metrics.

    Args:
        store: The backup store to read: a BackupStore block, or its name.
        textfile: Absolute path of a `.prom` file to write (node_exporter's textfile collector
            directory on the worker, e.g. /var/lib/prometheus/node-exporter/sentry_ops.prom);
            empty: only the artifact.
    """
    if textfile and not textfile.endswith(".prom"):
        raise ValueError(f"textfile: {textfile} must end in .prom (the collector reads only those)")
    store, backup_store = load_block(store, BackupStore)
    facts = metrics.read_facts(backup_store)
    text = metrics.render(facts, store, dt.datetime.now(dt.UTC))
    if textfile:
        write_atomically(Path(textfile), text)
    create_markdown_artifact(
        key=artifact_slug(f"backup-metrics-{store}"),
        markdown=f"```\n{text}```",
        description=f"Prometheus metrics of store {store}: {len(facts)} hosts",
    )
    get_run_logger().info(
        "metrics of %d hosts%s", len(facts), f" -> {textfile}" if textfile else ""
    )
    return text
