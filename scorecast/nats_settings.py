"""Where NATS is and how to log in to it: the fields every command that
connects to NATS shares (PROTOCOL.md sections 7 and 9), declared once.
:class:`~scorecast.gateway.settings.GatewaySettings` and
:class:`~scorecast.publishers.settings.PublisherSettings` start with them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Self

from scorecast.flags import csv, setting
from scorecast.protocol.nats_auth import NatsAuth

__all__ = ["DEFAULT_NATS", "NatsSettings"]

DEFAULT_NATS = "nats://127.0.0.1:4222"


@dataclass(frozen=True, slots=True)
class NatsSettings:
    nats: tuple[str, ...] = setting(
        (DEFAULT_NATS,), parse=csv, help="NATS URL(s), comma-separated for a cluster"
    )
    # credentials (docs/SECURITY-NATS.md); all None: anonymous
    nats_creds: str | None = setting(None, help="NATS credentials file (user JWT + NKey seed)")
    nats_user: str | None = setting(None, help="NATS user name (with --nats-password)")
    nats_password: str | None = setting(
        None, help="NATS password (prefer the environment variable)"
    )
    nats_token: str | None = setting(None, help="NATS authorization token")
    nats_tls_ca: str | None = setting(None, help="CA file (PEM) to verify the NATS servers' TLS")

    def with_auth(self, auth: NatsAuth) -> Self:
        """These settings, logging in with ``auth``."""
        return dataclasses.replace(
            self,
            nats_creds=auth.creds,
            nats_user=auth.user,
            nats_password=auth.password,
            nats_token=auth.token,
            nats_tls_ca=auth.tls_ca,
        )

    def nats_auth(self) -> NatsAuth:
        """The credentials; ValueError for a combination that cannot be used."""
        return NatsAuth(
            creds=self.nats_creds,
            user=self.nats_user,
            password=self.nats_password,
            token=self.nats_token,
            tls_ca=self.nats_tls_ca,
        )
