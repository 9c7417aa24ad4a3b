"""NATS credentials (PROTOCOL.md sections 7 and 9), one frozen record for every
component that connects to NATS.

Production NATS refuses anonymous clients and gives each role only what it
needs (deploy/nats/, docs/SECURITY-NATS.md). A component gets its credentials
from the edge (``--nats-creds``, ``--nats-user``/``--nats-password``,
``--nats-token``, ``--nats-tls-ca``) as one :class:`NatsAuth` and hands
``auth.options()`` to ``nats.connect``. No I/O here until ``options()``, which
reads the CA file into an SSL context.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

__all__ = ["ANONYMOUS", "NatsAuth"]


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """How to authenticate to NATS; every field None means anonymous.

    - ``creds``: a NATS credentials file (user JWT + NKey seed, decentralised auth);
    - ``user`` and ``password``: a user of the server's ``authorization`` block;
    - ``token``: a server-wide authorization token;
    - ``tls_ca``: a PEM file of the CA that signed the servers' certificates;
      set it to connect over TLS (``tls://`` URLs, or servers that require it).

    With a user name, replies come to ``_INBOX.<user>.>`` instead of
    ``_INBOX.>``, so that the server can let each role read only its own
    replies (deploy/nats/); a server allowing ``_INBOX.>`` allows these too.
    """

    creds: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: str | None = None

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ValueError("--nats-user and --nats-password go together")
        chosen = [self.creds is not None, self.user is not None, self.token is not None]
        if sum(chosen) > 1:
            raise ValueError("choose one of --nats-creds, --nats-user/password, --nats-token")

    @property
    def anonymous(self) -> bool:
        return self.creds is None and self.user is None and self.token is None

    def describe(self) -> str:
        """For logs: which kind of credential, never the secret."""
        if self.creds is not None:
            return f"credentials file {self.creds}"
        if self.user is not None:
            return f"user {self.user}"
        if self.token is not None:
            return "token"
        return "anonymous"

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = {}
        if self.creds is not None:
            options["user_credentials"] = self.creds
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password
            if _SUBJECT_TOKEN.fullmatch(self.user):
                options["inbox_prefix"] = f"_INBOX.{self.user}"
        if self.token is not None:
            options["token"] = self.token
        if self.tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=self.tls_ca)
        return options

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return f"NatsAuth({self.describe()}{', tls' if self.tls_ca else ''})"


ANONYMOUS = NatsAuth()
_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
