"""Sentry's nodestore rows in Postgres (`nodestore_node`, the guide era's payload store), read the
way Sentry reads them (getsentry/sentry src/sentry/services/nodestore/django/backend.py and
src/sentry/utils/strings.py, master late 2025; fixture tests/conformance/fixtures/
sentry_nodestore_row.json):

- `data` is `compress(payload)`: base64 of zlib, no prefix;
- the payload's first line is the node's JSON (compact, sorted keys); subkeys follow as
  `\\n<key>\\n<json>` lines; rows written before that format are pickles, which Sentry still reads
  and this module only recognises;
- an event's node id is md5("<project_id>:<event_id>"), not the event id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib


class NodeFormatError(ValueError):
    pass


def node_id(project_id: int, event_id: str) -> str:
    """The nodestore id Sentry gives an event's payload."""
    return hashlib.md5(f"{project_id}:{event_id}".encode()).hexdigest()


def decode(data: str) -> dict:
    """The node a `nodestore_node.data` value holds; NodeFormatError naming what is wrong."""
    try:
        raw = zlib.decompress(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError, zlib.error) as exc:
        raise NodeFormatError(f"not base64 of zlib, as Sentry's compress() writes: {exc}") from exc
    if not raw.startswith(b"{"):
        raise NodeFormatError(f"a legacy (pickled) node of {len(raw)} bytes, not JSON")
    first = raw.split(b"\n", 1)[0]
    try:
        node = json.loads(first)
    except ValueError as exc:
        raise NodeFormatError(f"its JSON does not parse: {exc}") from exc
    if not isinstance(node, dict):
        raise NodeFormatError(f"its JSON is a {type(node).__name__}, not an object")
    return node
