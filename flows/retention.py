"""Retention of backup sets: the store's policy (blocks/retention.py) over every host's sets."""

from __future__ import annotations

from prefect import flow

from blocks.backup_store import BackupStore
from flows.shared import HOUR, apply_retention, load_block


@flow(name="backup-retention", timeout_seconds=2 * HOUR)
def backup_retention(store: BackupStore | str) -> dict:
    """Apply the store's retention policy to every host's backup sets in it.

    Args:
        store: The backup store: a BackupStore block, or its name.
    """
    plan, _ = apply_retention(load_block(store, BackupStore)[1])
    return {
        "deleted": [s.backup_id for s in plan.delete],
        "kept": [s.backup_id for s in plan.keep],
    }
