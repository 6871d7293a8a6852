"""self-hosted's Sentry config files, as a restore onto that layout edits them (pure; no I/O):
`sentry/config.yml`'s secret key and `sentry/sentry.conf.py`'s nodestore options. Edits are line
edits, as self-hosted's own install scripts make them, so the operator's comments and other
settings stay as they are."""

from __future__ import annotations

import re

# getsentry/self-hosted install/generate-secret-key.sh @26.8.0: the key is the one line
# `system.secret-key: '<key>'` of sentry/config.yml (config.example.yml ships '!!changeme!!',
# which install.sh replaces with a new key; any other value it keeps)
SECRET_KEY_LINE = re.compile(r"^system\.secret-key:.*$", re.M)
PLACEHOLDER = "!!changeme!!"
# sentry/sentry.conf.example.py @26.8.0: the SeaweedFS nodestore, S3PassthroughDjangoNodeStorage
# (package sentry-nodestore-s3), whose options default read_through and delete_through to False;
# install/bootstrap-s3-nodestore.sh adds both as True when it finds rows in nodestore_node, but
# only on an install whose sentry.conf.py has no SENTRY_NODESTORE yet
NODESTORE_OPTIONS = re.compile(r"^SENTRY_NODESTORE_OPTIONS\s*=\s*\{[^}]*\}", re.M)
PASSTHROUGH = "S3PassthroughDjangoNodeStorage"
THROUGH = ('"read_through": True', '"delete_through": True')


class SentryConfigError(ValueError):
    pass


def with_secret_key(config_yml: str, key: str) -> str:
    """config.yml with `system.secret-key` set to `key` (YAML single-quoted), the rest as is."""
    if not key or "\n" in key:
        raise SentryConfigError("a secret key is one non-empty line")
    line = "system.secret-key: '" + key.replace("'", "''") + "'"
    if SECRET_KEY_LINE.search(config_yml):
        return SECRET_KEY_LINE.sub(lambda _: line, config_yml, count=1)
    return config_yml + ("" if config_yml.endswith("\n") or not config_yml else "\n") + line + "\n"


def secret_key(config_yml: str) -> str | None:
    """The key config.yml sets; None when unset or still self-hosted's placeholder."""
    match = SECRET_KEY_LINE.search(config_yml)
    if not match:
        return None
    value = match.group(0).split(":", 1)[1].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1].replace("''", "'") if value[0] == "'" else value[1:-1]
    return None if not value or value == PLACEHOLDER else value


def nodestore_reads_through(conf_py: str) -> bool | None:
    """None: the config's nodestore is not self-hosted's S3 passthrough (payloads are read where
    they are written); else whether it falls back to Postgres's nodestore_node on a miss."""
    options = NODESTORE_OPTIONS.search(conf_py)
    if PASSTHROUGH not in conf_py or not options:
        return None
    return all(re.search(t.replace(" ", r"\s*"), options.group(0)) for t in THROUGH)


def with_nodestore_read_through(conf_py: str) -> str:
    """sentry.conf.py with read_through and delete_through on in SENTRY_NODESTORE_OPTIONS (as
    bootstrap-s3-nodestore.sh writes them for an install that has payloads in Postgres): the
    payloads a restored nodestore_node holds are read, and `sentry cleanup` deletes them, instead
    of lying in Postgres for ever."""
    if nodestore_reads_through(conf_py) is None:
        raise SentryConfigError(
            f"sentry.conf.py does not configure {PASSTHROUGH} with SENTRY_NODESTORE_OPTIONS"
        )
    options = NODESTORE_OPTIONS.search(conf_py)
    assert options is not None
    # any earlier read_through/delete_through (False, say) out, then both in as True
    body = re.sub(r'\s*"(?:read|delete)_through"\s*:\s*\w+\s*,?', "", options.group(0))
    inner = body[:-1].rstrip()
    sep = "" if inner.endswith((",", "{")) else ","
    edited = inner + sep + "".join(f"\n    {t}," for t in THROUGH) + "\n}"
    return conf_py[: options.start()] + edited + conf_py[options.end() :]
