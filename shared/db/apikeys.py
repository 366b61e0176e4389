"""API keys: created with a random token shown once; only its sha256 is stored.

Scopes are ordered ``read < write < admin``; a key grants its scope on one catalogue, or, for
a global admin key (no catalogue), on every catalogue.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import API_KEY_SCOPES, ApiKey, utcnow
from shared.errors import InvalidInput, NotFound

TOKEN_PREFIX = "fir_"
SCOPE_RANK = {s: n for n, s in enumerate(API_KEY_SCOPES)}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyGrant:
    """What a presented key allows (a plain value: no ORM object leaves the session)."""

    key_id: int
    catalogue_id: int | None
    scope: str

    @property
    def is_global_admin(self) -> bool:
        return self.catalogue_id is None and self.scope == "admin"

    def allows(self, catalogue_id: int | None, scope: str) -> bool:
        if SCOPE_RANK[self.scope] < SCOPE_RANK[scope]:
            return False
        if self.catalogue_id is None:
            return True
        return catalogue_id is not None and catalogue_id == self.catalogue_id


def create_key(session: Session, scope: str, catalogue_id: int | None, name: str = "") -> tuple[int, str]:
    """A new key; returns (id, token). The token is not stored and cannot be shown again."""
    if scope not in SCOPE_RANK:
        raise InvalidInput(f"scope must be one of {', '.join(API_KEY_SCOPES)}")
    if catalogue_id is None and scope != "admin":
        raise InvalidInput("only admin keys may be global; give --catalogue for a read or write key")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(token_sha256=hash_token(token), prefix=token[:12], catalogue_id=catalogue_id,
                 scope=scope, name=name)
    session.add(key)
    session.flush()
    return key.id, token


def lookup(session: Session, token: str) -> KeyGrant | None:
    """The grant of a presented token, or None when unknown or revoked."""
    if not token or len(token) > 512:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.token_sha256 == hash_token(token)))
    if key is None or key.revoked_at is not None:
        return None
    return KeyGrant(key.id, key.catalogue_id, key.scope)


def revoke(session: Session, key_id: int) -> None:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"API key {key_id} not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
