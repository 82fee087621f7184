"""Configuration: one TOML file, frozen dataclasses, errors that name the key.

Every option has a default here, so an empty file (or none) is a valid
configuration. Unknown keys are errors, never ignored: a typo such as
``max_recipents`` must not silently leave the real limit at its default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import pwd
import re
import socket
import ssl
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources


# The numbers that may be 0, and what 0 means. Every other number must be
# greater than 0: a zero timeout, window, count or size would time out
# every session, kill healthy workers, refuse every client or block every
# delivery, which no operator means.
_ZERO_MEANS = {
    "server.workers": "one worker per CPU",
    "server.shutdown_grace_s": "no draining: end sessions at once",
    "limits.max_connections": "unlimited",
    "limits.max_connections_per_ip": "unlimited",
    "limits.max_connection_rate_per_ip": "unlimited",
    "relay.mx_cache_min_ttl_s": "no floor: DNS TTLs are kept as given",
    "relay.mx_cache_negative_ttl_s": "cached for mx_cache_min_ttl_s only",
    "relay.idle_reuse_s": "a connection is never reused",
}

# How often a worker tells the master it is alive; the worker timeout must
# be longer. Here rather than in worker.py, which the master must not import
# (uvloop, the resolver) before it forks.
HEARTBEAT_INTERVAL_S = 1.0

# One label of an RFC 1123 host name: letters, digits and hyphens, neither
# first nor last a hyphen.
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str = ""  # banner and Received headers; "" means the machine's FQDN
    listen: tuple[str, ...] = ("127.0.0.1:2525",)  # SMTP: MX and relay clients
    submission: tuple[str, ...] = ()  # RFC 6409 (port 587): STARTTLS, AUTH required
    # RFC 8314 (port 465): implicit TLS, AUTH required
    submissions: tuple[str, ...] = ()
    user: str = ""  # started as root: run workers as this user after binding
    workers: int = 0  # 0 means one per CPU
    shutdown_grace_s: float = 30.0  # SIGTERM: time sessions get to finish
    worker_timeout_s: float = 30.0  # a worker silent this long is killed
    log_level: str = "info"  # trace, debug, info, warning, error
    spool_dir: str = "var/spool"  # message bodies too large to hold in memory


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_message_octets: int = 26_214_400  # advertised as SIZE
    max_recipients: int = 100  # per message; more get 452 (RFC 5321 §4.5.3.1.8)
    max_command_octets: int = 512  # RFC 5321 §4.5.3.1.4
    max_data_line_octets: int = 1000  # RFC 5321 §4.5.3.1.6
    max_bad_commands: int = 10  # then 421 and close
    max_connections: int = 10_000  # concurrent, whole server; more get 421
    max_connections_per_ip: int = 50  # concurrent per client address
    max_connection_rate_per_ip: int = 600  # new connections per address per minute
    # Clients the two per-address limits above do not apply to, as Postfix
    # exempts $mynetworks: a local submitter or a load test from loopback.
    per_ip_exempt_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    command_timeout_s: float = 300.0  # for each whole command (RFC 5321 §4.5.3.2.7)
    data_timeout_s: float = 300.0  # for each line of content inside DATA or BDAT
    memory_buffer_octets: int = 262_144  # larger bodies spill to the spool dir


@dataclass(frozen=True, slots=True)
class MaildirConfig:
    root: str = "var/mail"  # mailbox "alice" of "example.com" is root/example.com/alice
    # "syncfs" makes a whole batch of files durable with one call per file
    # system; "fsync" syncs each file and directory on its own.
    sync: str = "syncfs"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    # Clients that may send to any domain without authenticating.
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    port: int = 25  # destination port of MX hosts
    smarthost: str = ""  # "host", "[host]", "ip" with optional ":port"; "" = MX
    nameservers: tuple[str, ...] = ()  # "ip" or "ip:port"; () = /etc/resolv.conf
    dns_timeout_s: float = 5.0
    mx_cache_path: str = "var/cache/mx.sqlite"
    mx_cache_min_ttl_s: int = 60
    mx_cache_max_ttl_s: int = 86400
    mx_cache_negative_ttl_s: int = 300
    max_per_destination: int = 20  # concurrent connections per domain, per worker
    connect_timeout_s: float = 30.0
    command_timeout_s: float = 300.0  # RFC 5321 §4.5.3.2
    data_timeout_s: float = 180.0  # each block of content
    final_timeout_s: float = 600.0  # the reply to the final dot
    idle_reuse_s: float = 5.0  # keep an idle connection this long for the next message
    tls: str = "may"  # "may": STARTTLS when offered, plain text if it fails; "none"
    tls_policy: dict[str, str] = field(
        default_factory=dict
    )  # domain -> may/encrypt/none
    max_received_headers: int = 50  # more means a mail loop: bounce with 5.4.6


@dataclass(frozen=True, slots=True)
class QueueConfig:
    directory: str = "var/queue"
    max_lifetime_s: float = 432_000.0  # 5 days, then bounce
    min_backoff_s: float = 300.0  # first retry; doubles per attempt
    max_backoff_s: float = 4000.0
    scan_interval_s: float = 60.0  # how often each worker looks for due messages
    max_active: int = 1000  # messages one worker delivers at once


@dataclass(frozen=True, slots=True)
class TLSConfig:
    certificate: str = ""  # PEM certificate chain; "" = no TLS at all
    key: str = ""  # PEM private key
    handshake_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    users_file: str = "var/users"  # managed with `mailfast user`
    # AUTH is offered only over TLS; this allows it in plain text to
    # clients on loopback addresses (a local webmail, tests).
    allow_plaintext_on_loopback: bool = False
    offer_on_smtp: bool = False  # also offer AUTH on the `listen` sockets (over TLS)
    sender_must_match: bool = True  # the envelope sender must be one of the user's
    max_failures: int = 5  # failed logins per client address within the window
    failure_window_s: float = 300.0
    # Where the workers count failed logins together (SQLite, no fsync).
    failures_path: str = "var/cache/login-failures.sqlite"


@dataclass(frozen=True, slots=True)
class DomainConfig:
    mailboxes: tuple[str, ...] = ()
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    catch_all: str = ""  # mailbox (or address) for unknown local parts; "" = reject


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    maildir: MaildirConfig = MaildirConfig()
    relay: RelayConfig = RelayConfig()
    queue: QueueConfig = QueueConfig()
    tls: TLSConfig = TLSConfig()
    auth: AuthConfig = AuthConfig()
    domains: dict[str, DomainConfig] = field(default_factory=dict)

    @property
    def hostname(self) -> str:
        return self.server.hostname or machine_hostname()

    @property
    def listeners(self) -> list[tuple[str, str]]:
        """(address, kind) of every listening socket; kind is "smtp",
        "submission" or "submissions"."""
        return [
            (address, kind)
            for kind, addresses in (
                ("smtp", self.server.listen),
                ("submission", self.server.submission),
                ("submissions", self.server.submissions),
            )
            for address in addresses
        ]

    @property
    def worker_count(self) -> int:
        return self.server.workers or os.cpu_count() or 1


def load(path: str | None) -> Config:
    """Read ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        text = resources.files("mailfast").joinpath("default.toml").read_text()
        source = "embedded default"
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        source = path
    return parse(text, source)


def parse(text: str, source: str = "<string>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        config = _build(Config, raw, "")
        _validate(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def to_toml(config: Config) -> str:
    """The effective configuration, in the file's own syntax."""
    lines: list[str] = []
    for section in ("server", "limits", "maildir", "relay", "queue", "tls", "auth"):
        lines.append(f"[{section}]")
        for f in dataclasses.fields(getattr(config, section)):
            value = getattr(getattr(config, section), f.name)
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    for name, domain in config.domains.items():
        lines.append(f"[domains.{_toml_value(name)}]")
        lines.append(f"mailboxes = {_toml_value(domain.mailboxes)}")
        lines.append(f"catch_all = {_toml_value(domain.catch_all)}")
        lines.append(f"aliases = {_toml_value(domain.aliases)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(
            f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()
        )
        return "{ " + items + " }" if items else "{}"
    raise TypeError(type(value))


def _toml_char(char: str) -> str:
    """One character of a TOML basic string, escaped where TOML requires it."""
    if char in ('"', "\\"):
        return "\\" + char
    if char < " " and char != "\t" or char == "\x7f":
        return f"\\u{ord(char):04X}"
    return char


def _build(cls: type, raw: object, prefix: str) -> object:
    """Build dataclass ``cls`` from a TOML table, naming any bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'file'}: expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key")
    values = {}
    for name in raw:
        values[name] = _convert(hints[name], raw[name], f"{prefix}{name}")
    return cls(**values)


def _convert(hint: object, value: object, key: str) -> object:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return {
            _convert(key_type, k, f"{key}.{k}"): _convert(value_type, v, f"{key}.{k}")
            for k, v in value.items()
        }
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(hint)
        if isinstance(value, str):  # a lone string where a list is expected
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        return tuple(_convert(item_type, v, key) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # TOML integers have no size limit
            raise ConfigError(f"{key}: {value} is too large") from None
    if hint in (int, float, str, bool):
        if type(value) is not hint:
            raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
        return value
    if isinstance(hint, types.UnionType):  # pragma: no cover - not used yet
        raise TypeError(hint)
    raise TypeError(f"unsupported configuration type {hint!r}")


def _type_name(hint: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}[
        hint
    ]


def _validate(config: Config) -> None:
    _validate_numbers(config)
    if config.server.hostname:
        problem = _host_name_problem(config.server.hostname)
        if problem:
            raise ConfigError(f"server.hostname: {config.server.hostname!r} {problem}")
    for key in ("listen", "submission", "submissions"):
        for address in getattr(config.server, key):
            parse_listen(address, f"server.{key}")
    addresses = [address for address, _kind in config.listeners]
    if len(set(addresses)) != len(addresses):
        raise ConfigError("server: an address is listed for two listeners")
    _validate_tls(config)
    if config.server.workers < 0:
        raise ConfigError("server.workers: must be 0 (one per CPU) or more")
    if config.server.log_level not in ("trace", "debug", "info", "warning", "error"):
        raise ConfigError("server.log_level: one of trace, debug, info, warning, error")
    if config.maildir.sync not in ("syncfs", "fsync"):
        raise ConfigError('maildir.sync: "syncfs" or "fsync"')
    _validate_relay(config.relay)
    _validate_networks(
        config.limits.per_ip_exempt_networks, "limits.per_ip_exempt_networks"
    )
    if config.limits.max_command_octets < 512:
        raise ConfigError("limits.max_command_octets: RFC 5321 requires at least 512")
    if config.limits.max_data_line_octets < 1000:
        raise ConfigError(
            "limits.max_data_line_octets: RFC 5321 requires at least 1000"
        )
    for name, domain in config.domains.items():
        if name != name.lower() or name.endswith(".") or not name:
            raise ConfigError(f"domains.{name}: write domains in lower case, no dot")
        # The name becomes a directory under maildir.root: beyond being a
        # valid domain, this keeps "/" and ".." (a path traversal) out.
        problem = _host_name_problem(name)
        if problem:
            raise ConfigError(f"domains.{name}: {problem}")
        for mailbox in domain.mailboxes:
            if not mailbox or "/" in mailbox or mailbox.startswith("."):
                raise ConfigError(f"domains.{name}.mailboxes: bad name {mailbox!r}")
    _validate_paths(config)


def warnings(config: Config) -> list[str]:
    """What is valid but surely not meant: each names its key.

    A submission listener without a certificate offers no AUTH and so takes
    no mail. An alias member or catch-all that names no mailbox or alias of
    a local domain drops its mail (mailfast forwards nowhere), which no one
    would notice until a sender complained.
    """
    found = []
    if config.server.submission and not config.tls.certificate:
        # AUTH is offered over TLS only, and submission requires it.
        found.append(
            "server.submission: no tls.certificate, so no AUTH"
            + (" but on loopback" if config.auth.allow_plaintext_on_loopback else "")
            + ": clients there get 530 for every MAIL"
        )
    for name, domain in config.domains.items():
        named = [
            (f"aliases.{alias}", member)
            for alias, members in domain.aliases.items()
            for member in members
        ]
        if domain.catch_all:
            named.append(("catch_all", domain.catch_all))
        for key, member in named:
            local, _at, where = member.lower().partition("@")
            where = where or name
            target = config.domains.get(where)
            if target is None:
                found.append(
                    f"domains.{name}.{key}: {member!r} is not in a local domain"
                    f" (mailfast does not forward); {_what_is_lost(key, domain)}"
                )
                continue
            known = {m.lower() for m in target.mailboxes} | {
                a.lower() for a in target.aliases
            }
            if local not in known:
                found.append(
                    f"domains.{name}.{key}: {member!r} is no mailbox or alias of"
                    f" {where}; {_what_is_lost(key, domain)}"
                )
    return found


def _what_is_lost(key: str, domain: DomainConfig) -> str:
    alias = key.removeprefix("aliases.")
    if alias != key and len(domain.aliases[alias]) > 1:
        return "the alias's other members get their copies, this one none"
    return "mail for it is refused"


def _validate_paths(config: Config) -> None:
    """A file where a directory belongs, or the reverse, fails every worker."""
    directories = {
        "maildir.root": config.maildir.root,
        "queue.directory": config.queue.directory,
        "server.spool_dir": config.server.spool_dir,
    }
    files = {
        "auth.users_file": config.auth.users_file,
        "auth.failures_path": config.auth.failures_path,
        "relay.mx_cache_path": config.relay.mx_cache_path,
    }
    for key, path in directories.items():
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"{key}: {path!r} exists and is not a directory")
    for key, path in files.items():
        if os.path.isdir(path):
            raise ConfigError(f"{key}: {path!r} is a directory")
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise ConfigError(f"{key}: {parent!r} is not a directory")


def _validate_numbers(config: Config) -> None:
    # TOML allows nan and inf, which compare false with everything: a nan
    # timeout passes "< 0" and "== 0" alike and then breaks every worker.
    for section in ("server", "limits", "maildir", "relay", "queue", "tls", "auth"):
        for f in dataclasses.fields(getattr(config, section)):
            key = f"{section}.{f.name}"
            value = getattr(getattr(config, section), f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, not {value}")
            if value < 0:
                raise ConfigError(f"{key}: must not be negative")
            if value == 0 and key not in _ZERO_MEANS:
                raise ConfigError(f"{key}: must be greater than 0")
    # The master kills a worker it has not heard from for this long; at or
    # under the interval of the heartbeats, it would kill healthy workers.
    if config.server.worker_timeout_s <= HEARTBEAT_INTERVAL_S:
        raise ConfigError(
            "server.worker_timeout_s: must be greater than the heartbeat"
            f" interval, {HEARTBEAT_INTERVAL_S:g} s"
        )


def _host_name_problem(name: str) -> str | None:
    """What makes ``name`` no RFC 1123 host name in ASCII, or None."""
    if not name.isascii():
        return "is not ASCII (write internationalized names as xn-- A-labels)"
    if len(name) > 253:
        return "is longer than 253 octets"
    for label in name.split("."):
        if not label:
            return "has an empty label"
        if len(label) > 63:
            return f"has a label longer than 63 octets: {label!r}"
        if not _HOST_LABEL.fullmatch(label):
            return (
                f"has a bad label {label!r}: use letters, digits and hyphens"
                " (not first or last)"
            )
    return None


def _validate_tls(config: Config) -> None:
    tls = config.tls
    if bool(tls.certificate) != bool(tls.key):
        raise ConfigError("tls.certificate and tls.key: give both or neither")
    if tls.certificate:
        try:  # load them now, so a bad file fails check-config, not a worker
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                tls.certificate, tls.key
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls.certificate/tls.key: cannot load: {exc}") from None
    elif config.server.submissions:
        raise ConfigError("server.submissions: implicit TLS needs tls.certificate")
    if config.server.user:
        try:
            pwd.getpwnam(config.server.user)
        except KeyError:
            raise ConfigError(
                f"server.user: no such user {config.server.user!r}"
            ) from None


def _validate_networks(networks: tuple[str, ...], key: str) -> None:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{key}: {network!r} is not a network") from None


def _validate_relay(relay: RelayConfig) -> None:
    _validate_networks(relay.trusted_networks, "relay.trusted_networks")
    for server in relay.nameservers:
        parse_nameserver(server)
    if relay.tls not in ("may", "none"):
        raise ConfigError('relay.tls: "may" or "none"')
    for domain, policy in relay.tls_policy.items():
        if policy not in ("may", "encrypt", "none"):
            raise ConfigError(f"relay.tls_policy.{domain}: may, encrypt or none")
    if not 0 < relay.port < 65536:
        raise ConfigError("relay.port: not a port number")
    _validate_smarthost(relay)
    if relay.mx_cache_min_ttl_s > relay.mx_cache_max_ttl_s:
        raise ConfigError(
            "relay.mx_cache_min_ttl_s: must not exceed relay.mx_cache_max_ttl_s"
            f" ({relay.mx_cache_min_ttl_s} > {relay.mx_cache_max_ttl_s})"
        )


def _validate_smarthost(relay: RelayConfig) -> None:
    """Refuse what the workers' ``split_smarthost`` would misread."""
    text = relay.smarthost
    if not text:
        return
    key = "relay.smarthost"
    if not text.isascii():
        raise ConfigError(
            f"{key}: {text!r} is not ASCII (write internationalized names as"
            " xn-- A-labels)"
        )
    host, port = split_smarthost(text, relay.port)
    # split_smarthost falls back to relay.port when it cannot read a port
    # ("h:", "h:x", "[h]x"), and to an empty host when a bracket is not
    # closed: here either is a typo to report, not a default to use.
    rest = text[len(host) :]
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        raise ConfigError(
            f"{key}: {text!r} is not host, [host] or ip, with an optional :port"
        )
    if not host:
        raise ConfigError(f"{key}: {text!r} has no host")
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port {port} is not 1 to 65535")
    if host.startswith("["):  # split_smarthost only returns it closed
        inner = host[1:-1]
        if inner[:5].lower() == "ipv6:":
            if not _is_ip_address(inner[5:], version=6):
                raise ConfigError(f"{key}: {inner[5:]!r} is not an IPv6 address")
            return
    else:
        inner = host
    if _is_ip_address(inner):
        return
    # The workers strip the final dot of a fully qualified name.
    problem = _host_name_problem(inner.removesuffix("."))
    if problem:
        raise ConfigError(f"{key}: host {inner!r} {problem}")


def _is_ip_address(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


def parse_nameserver(server: str) -> tuple[str, int]:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"`` or ``"[::1]:5353"`` to (ip, port)."""
    if server.count(":") > 1 and not server.startswith("["):
        host, port = server, "53"  # a bare IPv6 address
    elif ":" in server:
        host, _colon, port = server.rpartition(":")
    else:
        host, port = server, "53"
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        if not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(f"relay.nameservers: {server!r} is not ip[:port]") from None
    return host, int(port)


def parse_listen(address: str, key: str) -> tuple[str, int]:
    """``"127.0.0.1:25"`` or ``"[::1]:25"`` to a (host, port) pair."""
    host, sep, port = address.rpartition(":")
    # isdigit alone also passes "²", on which int() raises ValueError.
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {address!r} is not host:port")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{key}: {host!r} is not an IP address") from None
    return host, int(port)


def machine_hostname() -> str:
    """The machine's name for the banner, as Postfix's myhostname defaults.

    getfqdn() answers "localhost" where /etc/hosts puts the machine's name
    on a loopback line (common on Debian); the kernel's own name says more.
    """
    fqdn = socket.getfqdn()
    if fqdn and fqdn != "localhost" and not fqdn.startswith("localhost."):
        return fqdn
    return socket.gethostname() or fqdn


def split_smarthost(smarthost: str, default_port: int) -> tuple[str, int] | None:
    """``"[relay.example]:587"`` to ("[relay.example]", 587); "" to None."""
    if not smarthost:
        return None
    host, port = smarthost, default_port
    if smarthost.startswith("["):
        close = smarthost.find("]")
        rest = smarthost[close + 1 :]
        host = smarthost[: close + 1]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif smarthost.count(":") == 1:
        host, _colon, port_text = smarthost.partition(":")
        if port_text.isdigit():
            port = int(port_text)
    return host, port
