"""Sentry's HTTP interface on the host, through the SSH tunnel: the web port, the store endpoint,
the event lookup.

A part of `SentryHost` (blocks/sentry_host.py): its methods use the block's fields and its one
transport."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

from blocks.ssh import RemoteCommandError

if TYPE_CHECKING:
    from blocks.sentry_host import SentryHost  # noqa: F401


class SentryAPI:
    """Sentry's HTTP interface on the host, through the SSH tunnel."""

    def web_request(
        self,
        path: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15,
        port: int | None = None,
    ) -> tuple[int, bytes]:
        """HTTP to Sentry's web port (or `port`) on the host, through the SSH tunnel ->
        (status, body). Status 0: nothing answered."""
        target = port or self.web_port
        with self.tunnel(target) as port:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", data=data, headers=headers or {}
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    return resp.status, resp.read(1 << 20)
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read(1 << 20)
            except OSError as exc:
                return 0, f"no answer on port {target}: {exc}".encode()

    def send_event(self, event: dict) -> str:
        """Send an event to the store endpoint of `probe_dsn`'s project, as an SDK would: on
        the DSN's port of the host (where Relay, or a proxy in front of it, takes events: a
        guide host publishing Relay on its own port), else on web_port (self-hosted's nginx
        sends /api/<project>/store/ to Relay)."""
        if self.probe_dsn is None:
            raise ValueError(f"{self.label}: the block has no probe_dsn")
        dsn = urllib.parse.urlsplit(self.probe_dsn.get_secret_value())
        project = dsn.path.strip("/").rsplit("/", 1)[-1]
        auth = f"Sentry sentry_version=7, sentry_client=sentry-ops/1, sentry_key={dsn.username}"
        status, body = self.web_request(
            f"/api/{project}/store/",
            data=json.dumps(event).encode(),
            headers={"X-Sentry-Auth": auth, "Content-Type": "application/json"},
            port=dsn.port,
        )
        return store_response_id(self.label, f"POST /api/{project}/store/", status, body)

    def lookup_event(self, event_id: str) -> dict | None:
        """The processed event (its issue and payload) through Sentry's API; None: not (yet)."""
        if self.api_token is None:
            raise ValueError(f"{self.label}: the block has no api_token")
        status, body = self.web_request(
            f"/api/0/organizations/{self.organization}/eventids/{event_id}/",
            headers={"Authorization": f"Bearer {self.api_token.get_secret_value()}"},
        )
        return event_lookup_result(self.label, status, body)


# What the eventids lookup needs (getsentry/sentry
# src/sentry/issues/endpoints/organization_eventid.py: OrganizationPermission, GET allowed to
# org:read, org:write or org:admin)
LOOKUP_SCOPE = "org:read"


def store_response_id(label: str, what: str, status: int, body: bytes) -> str:
    """The event id Relay's store/envelope endpoint answered: 200 `{"id": "<32 hex>"}`
    (getsentry/relay relay-server/src/endpoints/store.rs; fixture sentry_store_response.json)."""
    text = body.decode("utf-8", "replace")
    try:
        event_id = json.loads(text).get("id") if status == 200 else None
    except (ValueError, AttributeError):
        event_id = None
    if not isinstance(event_id, str) or not event_id:
        raise RemoteCommandError(label, what, status, text[:300])
    return event_id


def event_lookup_result(label: str, status: int, body: bytes) -> dict | None:
    """GET /api/0/organizations/<org>/eventids/<id>/ judged (fixture
    sentry_eventids_response.json): 200 the event, its issue and project; 404 not (yet)."""
    text = body.decode("utf-8", "replace")
    if status == 404:
        return None
    if status == 403:
        raise RemoteCommandError(
            label, "GET .../eventids/", status, text[:300],
            why=f"the block's api_token lacks the {LOOKUP_SCOPE} scope the event-ID lookup "
            f"needs: create a token with {LOOKUP_SCOPE} (Settings > Auth Tokens) and save it in "
            "the block's api_token",
        )  # fmt: skip
    if status != 200:
        raise RemoteCommandError(label, "GET .../eventids/", status, text[:300])
    found = json.loads(text)
    event = found.get("event") or {}
    # Sentry still answers for an event whose payload is gone from the nodestore (its row in
    # Snuba outlives it), with the payload's fields empty: that is not a readable event
    return found if event.get("message") or event.get("entries") else None
