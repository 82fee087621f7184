"""Running as root only as long as needed: binding ports, then a plain user.

The master keeps root (it must bind new ports on reload and read the TLS key
for each new generation of workers, as Postfix's master does) but never
touches client data. Each worker loads what only root may read (the TLS key,
the users file), then switches to ``server.user`` for good before it serves
anyone. The directories the workers write are created and handed to that
user by the master at start-up.
"""

from __future__ import annotations

import logging
import os
import pwd

from .config import Config

log = logging.getLogger("mailfast.master")


class PrivilegeError(Exception):
    """The switch to the unprivileged user did not take."""


def writable_directories(config: Config) -> list[str]:
    return [
        os.path.abspath(config.maildir.root),
        os.path.abspath(config.queue.directory),
        os.path.abspath(config.server.spool_dir),
        os.path.dirname(os.path.abspath(config.relay.mx_cache_path)),
        os.path.dirname(os.path.abspath(config.auth.failures_path)),
    ]


def prepare_directories(config: Config) -> None:
    """Create the data directories and, when we are root, give them to the user."""
    account = _account(config)
    maildir_root = os.path.abspath(config.maildir.root)
    for directory in writable_directories(config):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if account is not None:
            _give(directory, account, thorough=directory != maildir_root)


def drop(config: Config) -> None:
    """Become ``server.user`` for good (in a worker, after loading secrets)."""
    os.umask(0o077)  # mail is private: files 0600, directories 0700
    account = _account(config)
    if account is None:
        return
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    if os.geteuid() == 0 or os.getegid() != account.pw_gid:
        raise PrivilegeError(f"still privileged after switching to {account.pw_name}")
    try:  # a process that can get root back has not dropped it
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("could regain root after dropping it")


def warn_if_root(config: Config) -> None:
    if os.geteuid() == 0 and not config.server.user:
        log.warning("running as root with no server.user: workers keep root privileges")


def _account(config: Config) -> pwd.struct_passwd | None:
    if os.geteuid() != 0 or not config.server.user:
        return None
    return pwd.getpwnam(config.server.user)


def _give(top: str, account: pwd.struct_passwd, thorough: bool) -> None:
    """chown what under ``top`` is not the user's already.

    ``thorough`` checks every entry (the queue, spool and cache: bounded by
    the queue size). A Maildir tree can hold millions of files, so there a
    directory the user already owns is taken to be the user's throughout:
    mailfast creates everything below it as that user.
    """
    for directory, subdirectories, files in os.walk(top):
        if not thorough and directory != top and _owned(directory, account):
            subdirectories.clear()
            continue
        for path in (directory, *(os.path.join(directory, name) for name in files)):
            if not _owned(path, account):
                os.lchown(path, account.pw_uid, account.pw_gid)


def _owned(path: str, account: pwd.struct_passwd) -> bool:
    status = os.lstat(path)
    return status.st_uid == account.pw_uid and status.st_gid == account.pw_gid
