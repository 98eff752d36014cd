"""The local users file: ``user:realm:HA1`` per line, as htdigest writes it
(HA1 = MD5 of ``user:realm:password``, 32 hex digits); a 64-digit HA1 is
SHA-256 (RFC 7616). ``#`` starts a comment. A user may have one line per
algorithm."""

from __future__ import annotations

from hasip.auth.digest import HA1_LENGTHS, Credentials, response_matches

OK = "ok"
UNKNOWN = "unknown_user"
WRONG = "wrong_password"


class UsersFileError(ValueError):
    """A users file line that cannot be used; names file and line."""


class LocalUsers:
    def __init__(self, path: str) -> None:
        self.path = path
        self.ha1: dict[tuple[str, str, str], str] = {}
        self.reload()

    def reload(self) -> None:
        table: dict[tuple[str, str, str], str] = {}
        try:
            with open(self.path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise UsersFileError(f"{self.path}: cannot read: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            if len(parts) != 3 or not parts[0]:
                raise UsersFileError(f"{self.path}:{number}: expected user:realm:HA1")
            user, realm, ha1 = parts
            ha1 = ha1.lower()
            algorithm = HA1_LENGTHS.get(len(ha1))
            if algorithm is None or any(c not in "0123456789abcdef" for c in ha1):
                raise UsersFileError(f"{self.path}:{number}: HA1 must be 32 (MD5) or 64 "
                                     "(SHA-256) hex digits")
            table[(user, realm, algorithm)] = ha1
        self.ha1 = table

    def algorithms(self) -> set[str]:
        return {key[2] for key in self.ha1}

    def verify(self, creds: Credentials, method: str) -> str:
        ha1 = self.ha1.get((creds.username, creds.realm, creds.algorithm))
        if ha1 is None:
            return UNKNOWN
        return OK if response_matches(creds, ha1, method) else WRONG
