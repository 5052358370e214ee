"""API keys and roles: who may see which deals, and who may change what.

A key is a random token shown once when created (``pipecast keys create``); only its SHA-256
hash is stored, in a JSON file beside the store (``PIPECAST_KEYS_FILE``). Keys are high-entropy
random strings, so a plain hash is enough to make the file useless to whoever reads it.

Roles and what they see:

- ``rep`` (bound to an owner): their own deals only, everywhere (lists, by id, forecasts);
- ``manager`` (bound to a team): their team's deals and reps;
- ``revops``: everything, and may import data, retrain and promote models.

A scope asked for beyond the role is refused (403), never silently narrowed, so a caller always
knows what a number covers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from features.errors import InputError, NotFoundError, PipecastError

KEY_PREFIX = "pc_"
_ID_CHARS = 8  # characters of the token shown as the key's id (safe to print: not the secret)


class Role(StrEnum):
    REP = "rep"
    MANAGER = "manager"
    REVOPS = "revops"


class AuthError(PipecastError):
    """No key, or a key that is unknown or revoked (HTTP 401)."""


class ForbiddenError(PipecastError):
    """The key is valid but its role may not do or see this (HTTP 403)."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key: its id, the hash of its secret, and what it may see."""

    key_id: str
    key_hash: str
    role: Role
    owner: str | None
    team: str | None
    label: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Caller:
    """Who is asking: a key's role and binding, used to scope every query."""

    key_id: str
    role: Role
    owner: str | None = None
    team: str | None = None

    def scope(self, *, owner: str | None, team: str | None) -> tuple[str | None, str | None]:
        """The (owner, team) filter to apply for a request asking for ``owner``/``team``.

        A rep always gets their own owner filter; a manager their team. Asking for someone
        else's owner or team raises :class:`ForbiddenError`.
        """
        if self.role is Role.REVOPS:
            return owner, team
        if self.role is Role.REP:
            if owner is not None and owner != self.owner:
                raise ForbiddenError(f"a rep key may only see its own deals ({self.owner})")
            if team is not None and team != self.team and self.team is not None:
                raise ForbiddenError("a rep key may not ask for another team")
            return self.owner, team
        if team is not None and team != self.team:
            raise ForbiddenError(f"a manager key may only see its own team ({self.team})")
        return owner, self.team

    def may_see(self, *, owner: str | None, team: str | None) -> bool:
        """Whether a deal (or rep) with this owner and team is inside the caller's scope."""
        if self.role is Role.REVOPS:
            return True
        if self.role is Role.REP:
            return owner is not None and owner == self.owner
        return team is not None and team == self.team

    def require(self, role: Role) -> None:
        if self.role is not role:
            raise ForbiddenError(f"this needs a {role.value} key; yours is a {self.role.value} key")


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session_secret(keys_file: Path) -> str:
    """The secret that signs web session cookies: made once beside the keys file (mode 600), so
    every worker of a server, and the next server, accept the same cookies."""
    path = keys_file.with_name(keys_file.name + ".session-secret")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole to a temporary file, then linked in: a second process either wins the
        # link or reads the complete secret of the first, never half of it.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_urlsafe(48))
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        os.unlink(tmp)
    return path.read_text(encoding="ascii").strip()


class KeyStore:
    """The keys file: created on first write, replaced atomically, writes serialised by a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # (file identity, active keys by hash): one stat per request instead of a parse.
        self._cache: tuple[tuple[int, int, int], dict[str, ApiKey]] | None = None

    # --- reading ---------------------------------------------------------------------------
    def all(self) -> list[ApiKey]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [ApiKey(**{**item, "role": Role(item["role"])}) for item in data.get("keys", [])]
        except (ValueError, KeyError, TypeError) as err:
            raise PipecastError(f"{self.path}: not a pipecast keys file ({err})") from None

    def by_hash(self) -> dict[str, ApiKey]:
        """Active keys by hash; re-read only when the file changed (a revoke applies at once)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache
        if cached is not None and cached[0] == ident:
            return cached[1]
        keys = {k.key_hash: k for k in self.all() if k.active}
        self._cache = (ident, keys)
        return keys

    def authenticate(self, token: str | None) -> Caller:
        """The caller behind a bearer token, or :class:`AuthError`."""
        if not token:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        return self.caller_by_hash(hash_key(token.strip()))

    def caller_by_hash(self, key_hash: str) -> Caller:
        """The caller of a key known by its hash (a web session keeps the hash, not the key)."""
        key = self.by_hash().get(key_hash)
        if key is None:
            raise AuthError("unknown or revoked API key")
        return Caller(key.key_id, key.role, key.owner, key.team)

    # --- writing ---------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[list[ApiKey]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = self.all()
            yield keys
            payload = {"keys": [asdict(k) for k in keys]}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(payload, out, indent=2)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)

    def create(
        self,
        role: Role,
        *,
        owner: str | None = None,
        team: str | None = None,
        label: str = "",
    ) -> tuple[ApiKey, str]:
        """Store a new key; returns it with its secret token (shown once, never stored)."""
        if role is Role.REP and not owner:
            raise InputError("a rep key needs --owner (the rep whose deals it may see)")
        if role is Role.MANAGER and not team:
            raise InputError("a manager key needs --team (the team it may see)")
        # The id (hex: safe as a command-line argument) leads the token, so a user can tell which
        # key a token is; the rest is the secret.
        key_id = secrets.token_hex(_ID_CHARS // 2)
        token = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(
            key_id=key_id,
            key_hash=hash_key(token),
            role=role,
            owner=owner if role is not Role.REVOPS else None,
            team=team if role is not Role.REVOPS else None,
            label=label,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self._locked() as keys:
            keys.append(key)
        return key, token

    def revoke(self, key_id: str) -> ApiKey:
        with self._locked() as keys:
            for i, key in enumerate(keys):
                if key.key_id == key_id and key.active:
                    now = datetime.now(UTC).isoformat(timespec="seconds")
                    keys[i] = replace(key, revoked_at=now)
                    return keys[i]
        raise NotFoundError(f"no active key with id {key_id!r}; `pipecast keys list` shows them")
