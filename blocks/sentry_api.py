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
    ) -> tuple[int, bytes]:
        """HTTP to Sentry's web port on the host, through the SSH tunnel -> (status, body).
        Status 0: nothing answered."""
        with self.tunnel(self.web_port) as port:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", data=data, headers=headers or {}
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    return resp.status, resp.read(1 << 20)
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read(1 << 20)
            except OSError as exc:
                return 0, f"no answer on port {self.web_port}: {exc}".encode()

    def send_event(self, event: dict) -> str:
        """Send an event to the store endpoint of `probe_dsn`'s project, as an SDK would."""
        if self.probe_dsn is None:
            raise ValueError(f"{self.label}: the block has no probe_dsn")
        dsn = urllib.parse.urlsplit(self.probe_dsn.get_secret_value())
        project = dsn.path.strip("/").rsplit("/", 1)[-1]
        auth = f"Sentry sentry_version=7, sentry_client=sentry-ops/1, sentry_key={dsn.username}"
        status, body = self.web_request(
            f"/api/{project}/store/",
            data=json.dumps(event).encode(),
            headers={"X-Sentry-Auth": auth, "Content-Type": "application/json"},
        )
        if status != 200:
            raise RemoteCommandError(
                self.label, f"POST /api/{project}/store/", status, body.decode("utf-8", "replace")
            )
        return json.loads(body)["id"]

    def lookup_event(self, event_id: str) -> dict | None:
        """The processed event (its issue and payload) through Sentry's API; None: not (yet)."""
        if self.api_token is None:
            raise ValueError(f"{self.label}: the block has no api_token")
        status, body = self.web_request(
            f"/api/0/organizations/{self.organization}/eventids/{event_id}/",
            headers={"Authorization": f"Bearer {self.api_token.get_secret_value()}"},
        )
        if status == 404:
            return None
        if status != 200:
            raise RemoteCommandError(
                self.label, "GET .../eventids/", status, body.decode("utf-8", "replace")[:300]
            )
        found = json.loads(body)
        event = found.get("event") or {}
        # Sentry still answers for an event whose payload is gone from the nodestore (its row in
        # Snuba outlives it), with the payload's fields empty: that is not a readable event
        return found if event.get("message") or event.get("entries") else None
