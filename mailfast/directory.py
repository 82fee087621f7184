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
        # Local parts are matched without regard to case; the Maildir keeps
        # the spelling of the configuration.
        self._mailboxes = {
            domain: {name.lower(): name for name in settings.mailboxes}
            for domain, settings in config.domains.items()
        }
        self._aliases = {
            domain: {
                name.lower(): members for name, members in settings.aliases.items()
            }
            for domain, settings in config.domains.items()
        }
        self._catch_all = {
            domain: settings.catch_all for domain, settings in config.domains.items()
        }
        # <postmaster> without a domain (RFC 5321 §4.5.1) is the first domain's.
        self.primary_domain = next(iter(config.domains), "")

    def is_local_domain(self, domain: str) -> bool:
        return domain in self._mailboxes

    def resolve(self, mailbox: Mailbox) -> tuple[LocalTarget, ...] | None:
        """The mailboxes a local address delivers to, or None if unknown."""
        domain = mailbox.domain or self.primary_domain
        targets: dict[LocalTarget, None] = {}  # ordered and without repeats
        if not self._expand(mailbox.local_part.lower(), domain, targets, {}, 0):
            return None
        return tuple(targets)

    def _expand(
        self,
        local_part: str,
        domain: str,
        targets: dict[LocalTarget, None],
        seen: dict[tuple[str, str], bool],
        depth: int,
    ) -> bool:
        """Add the mailboxes of one address to ``targets``; False if it has none.

        ``seen`` makes each address expand once however many lists name it:
        without it, aliases naming each other cost exponential time.
        """
        key = (local_part, domain)
        if key in seen:
            return seen[key]
        mailboxes = self._mailboxes.get(domain)
        if mailboxes is None or depth > MAX_ALIAS_DEPTH:
            return False
        seen[key] = False  # a loop back to this address adds nothing
        if local_part in mailboxes:
            targets[LocalTarget(domain, mailboxes[local_part])] = None
            seen[key] = True
            return True
        members = self._aliases[domain].get(local_part)
        if members is None and self._catch_all[domain]:
            members = (self._catch_all[domain],)
        if members is None:
            return False
        found = False
        for member in members:
            member_local, _at, member_domain = member.lower().partition("@")
            if self._expand(
                member_local, member_domain or domain, targets, seen, depth + 1
            ):
                found = True
        seen[key] = found
        return found
