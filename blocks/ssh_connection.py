"""`SSHConnection`: how to reach a Docker host over SSH, as a block of its own (nested in a
`SentryHost`), as prefect-aws keeps its credentials block apart from the resources that use it.
The transport that uses it is blocks/ssh.py."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from blocks.ssh import SSHTarget, parse_host_key

PORT = {"minimum": 1, "maximum": 65535}  # the form checks it; the validator explains


class SSHConnection(Block):
    """How to reach a Docker host: sshd's address, the user, its key, and the host's pinned key.
    A block of its own (nested in a SentryHost), as prefect-aws keeps credentials apart from the
    resource: a drill stack on the same host, or another stack there, reuses it whole."""

    _block_type_name = "SSH Connection"
    _block_type_slug = "ssh-connection"
    _logo_url = None  # an operator's UI often has no internet, where a remote logo is broken
    _documentation_url = "https://docs.paramiko.org/en/stable/api/client.html"  # type: ignore[assignment]
    _description = (
        "An SSH login to a Docker host: address, user, private key, and the host's public key, "
        "pinned (any other key is refused)."
    )

    host: str = Field(description="Host name or address sshd listens on.")
    port: int = Field(default=22, json_schema_extra=PORT, description="sshd port.")
    user: str = Field(default="root", description="SSH user; must be able to run docker.")
    private_key: SecretStr = Field(
        description="Unencrypted OpenSSH private key (ed25519, ECDSA or RSA) for the user."
    )
    host_key: str = Field(
        description=(
            "The host's pinned public key, 'ssh-ed25519 AAAA...' (from `ssh-keyscan`, verified "
            "against `ssh-keygen -lf` on the host). Any other key is refused."
        )
    )
    connect_timeout: float = Field(default=10.0, description="Seconds to wait for sshd.")

    @field_validator("host", "user")
    @classmethod
    def _not_blank(cls, value: str, info) -> str:
        if not value or not value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"ssh {info.field_name} must be a non-empty word, got {value!r}")
        return value

    @field_validator("port")
    @classmethod
    def _valid_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"ssh port must be a TCP port 1-65535, got {value}")
        return value

    @field_validator("host_key")
    @classmethod
    def _parseable_host_key(cls, value: str) -> str:
        parse_host_key(value)
        return value

    @property
    def target(self) -> SSHTarget:
        return SSHTarget(
            host=self.host,
            port=self.port,
            user=self.user,
            private_key=self.private_key.get_secret_value(),
            host_key=self.host_key,
            connect_timeout=self.connect_timeout,
        )
