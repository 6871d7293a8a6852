"""The alert automations setup makes (a failed run; no recent backup of a host), sent to a webhook
block."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import SecretStr

from deployments.config import Config

AUTOMATION_PREFIX = "sentry-ops: "
ALERTED_FLOWS = (
    "backup",
    "clickhouse-snapshot",
    "verify-backup",
    "restore-drill",
    "ship-wal",
    "upgrade",
    "health-check",
    "retention-cleanup",
    "fleet-backup",
    "fleet-health-check",
)
FAILED_SUBJECT = "sentry-ops: {{ flow.name }} {{ flow_run.name }} {{ flow_run.state.name }}"
FAILED_BODY = (
    "{{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
)


def plan_automations(config: Config, block_id: Any) -> list[Any]:
    """The alerts: any failed or crashed run of an operation that guards data or health; per host,
    no completed backup within backup_max_age_hours (a proactive trigger: it fires on silence)."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    assert config.alerts is not None
    automations = [
        AutomationCore(
            name=f"{AUTOMATION_PREFIX}a run failed",
            description="A sentry-ops run that guards data or health failed or crashed.",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": list(ALERTED_FLOWS),
                },
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id, subject=FAILED_SUBJECT, body=FAILED_BODY
                )
            ],
        )
    ]
    hours = config.alerts.backup_max_age_hours
    for host in config.hosts:
        automations.append(
            AutomationCore(
                name=f"{AUTOMATION_PREFIX}no backup of {host} in {hours:g} h",
                description=f"No sentry.backup.completed of host block {host} in {hours:g} h.",
                trigger=EventTrigger(
                    match={"prefect.resource.id": "sentry-ops.backup.*", "sentry-ops.host": host},
                    expect={"sentry.backup.completed"},
                    posture=Posture.Proactive,
                    threshold=1,
                    within=timedelta(hours=hours),
                ),
                actions=[
                    SendNotification(
                        block_document_id=block_id,
                        subject=f"sentry-ops: no backup of {host} in {hours:g} h",
                        body=(
                            f"No backup of {host} completed in the last {hours:g} hours: "
                            f"look at the runs of backup/{host} in the Prefect UI."
                        ),
                    )
                ],
            )
        )
    return automations


def apply_automations(client: Any, wanted: list[Any]) -> list[str]:
    """Create or update each wanted automation by name; remove sentry-ops automations no longer
    wanted (a host taken out of the config, or no [alerts] table)."""
    existing = {
        a.name: a for a in client.read_automations() if a.name.startswith(AUTOMATION_PREFIX)
    }
    for automation in wanted:
        if automation.name in existing:
            client.update_automation(existing.pop(automation.name).id, automation)
        else:
            client.create_automation(automation)
    for stale in existing.values():
        client.delete_automation(stale.id)
    return [a.name for a in wanted]


def webhook_block(url: SecretStr) -> Any:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(
        name="sentry-ops",
        url="{{url}}",
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        secrets={"url": url.get_secret_value()},
    )
