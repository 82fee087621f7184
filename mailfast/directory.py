"""Who receives mail here: local domains, their mailboxes, aliases, catch-alls.

Pure lookups over the configuration: no I/O, so the session can ask while it
answers RCPT without awaiting anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from .addresses import Mailbox
from .config import Config

MAX_ALIAS_DEPTH = 10  # alias chains longer than this are a configuration loop


@dataclass(frozen=True, slots=True)
class LocalTarget:
    """One mailbox that gets a copy: ``var/mail/<domain>/<mailbox>``."""

    domain: str
    mailbox: str

    @property
    def address(self) -> str:
        return f"{self.mailbox}@{self.domain}"


class Directory:
    def __init__(self, config: Config):
        self._domains = config.domains
        # <postmaster> without a domain (RFC 5321 §4.5.1) is the first domain's.
        self.primary_domain = next(iter(config.domains), "")

    def is_local_domain(self, domain: str) -> bool:
        return domain in self._domains

    def resolve(self, mailbox: Mailbox) -> tuple[LocalTarget, ...] | None:
        """The mailboxes a local address delivers to, or None if unknown."""
        domain = mailbox.domain or self.primary_domain
        targets: dict[LocalTarget, None] = {}  # ordered and without repeats
        if not self._expand(mailbox.local_part.lower(), domain, targets, 0):
            return None
        return tuple(targets)

    def _expand(
        self, local_part: str, domain: str, targets: dict[LocalTarget, None], depth: int
    ) -> bool:
        config = self._domains.get(domain)
        if config is None or depth > MAX_ALIAS_DEPTH:
            return False
        if local_part in config.mailboxes:
            targets[LocalTarget(domain, local_part)] = None
            return True
        members = config.aliases.get(local_part)
        if members is None and config.catch_all:
            members = (config.catch_all,)
        if members is None:
            return False
        found = False
        for member in members:
            member_local, _at, member_domain = member.lower().partition("@")
            if self._expand(member_local, member_domain or domain, targets, depth + 1):
                found = True
        return found
