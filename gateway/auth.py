"""Tokens (PROTOCOL.md section 6): JWT with HS256 and a shared secret, or
RS256/ES256 with a public key; ``exp`` required; an optional ``topics`` claim
of patterns where ``*`` matches one token and ``>`` one or more trailing
tokens. Without the claim every topic is allowed.

Feeds at ``scorecast ingest`` use the same verifier on another claim
(PROTOCOL.md section 8): ``TokenVerifier(..., claim="publish",
claim_required=True)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jwt

from scorecast.protocol.errors import Unauthorized

__all__ = ["Grant", "TokenVerifier", "topic_allowed"]


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: until ``exp``, the ``patterns`` (None: all)."""

    exp: int
    patterns: tuple[str, ...] | None

    def allows(self, topic: str) -> bool:
        return self.patterns is None or any(topic_allowed(p, topic) for p in self.patterns)


OPEN = Grant(exp=0, patterns=None)


def topic_allowed(pattern: str, topic: str) -> bool:
    wanted, tokens = pattern.split("."), topic.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)


class TokenVerifier:
    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key_file: str | None = None,
        claim: str = "topics",
        claim_required: bool = False,
    ) -> None:
        self.claim = claim
        self.claim_required = claim_required
        if public_key_file:
            self.key: str | bytes = Path(public_key_file).read_bytes()
            self.algorithms = ["RS256", "ES256"]
        elif secret:
            self.key = secret
            self.algorithms = ["HS256"]
        else:
            raise ValueError("a secret or a public key is needed")

    def verify(self, token: str | None, request_id: int | None = None) -> Grant:
        """The token's grant, or Unauthorized saying briefly why not."""
        if not token:
            raise Unauthorized("missing token", request_id)
        try:
            claims = jwt.decode(
                token, self.key, algorithms=self.algorithms, options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired", request_id) from None
        except jwt.MissingRequiredClaimError:
            raise Unauthorized("token has no exp", request_id) from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token", request_id) from None
        patterns = claims.get(self.claim)
        if patterns is None and self.claim_required:
            raise Unauthorized(f"token has no {self.claim} claim", request_id)
        if patterns is not None and (
            not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns)
        ):
            raise Unauthorized(f"the {self.claim} claim must be a list of strings", request_id)
        return Grant(exp=int(claims["exp"]), patterns=None if patterns is None else tuple(patterns))
