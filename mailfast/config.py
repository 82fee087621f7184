"""Configuration: one TOML file, frozen dataclasses, errors that name the key.

Every option has a default here, so an empty file (or none) is a valid
configuration. Unknown keys are errors, never ignored: a typo such as
``max_recipents`` must not silently leave the real limit at its default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str = ""  # banner and Received headers; "" means the machine's FQDN
    listen: tuple[str, ...] = ("127.0.0.1:2525",)
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
    command_timeout_s: float = 300.0  # RFC 5321 §4.5.3.2.7
    data_timeout_s: float = 300.0  # between reads inside DATA or BDAT
    memory_buffer_octets: int = 262_144  # larger bodies spill to the spool dir


@dataclass(frozen=True, slots=True)
class MaildirConfig:
    root: str = "var/mail"  # mailbox "alice" of "example.com" is root/example.com/alice
    # "syncfs" makes a whole batch of files durable with one call per file
    # system; "fsync" syncs each file and directory on its own.
    sync: str = "syncfs"


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
    domains: dict[str, DomainConfig] = field(default_factory=dict)

    @property
    def hostname(self) -> str:
        return self.server.hostname or socket.getfqdn()

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
    for section in ("server", "limits", "maildir"):
        lines.append(f"[{section}]")
        for f in dataclasses.fields(getattr(config, section)):
            value = getattr(getattr(config, section), f.name)
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    for name, domain in config.domains.items():
        lines.append(f"[domains.{_toml_value(name)}]")
        lines.append(f"mailboxes = {_toml_value(domain.mailboxes)}")
        lines.append(f"catch_all = {_toml_value(domain.catch_all)}")
        aliases = ", ".join(
            f"{_toml_value(k)} = {_toml_value(v)}" for k, v in domain.aliases.items()
        )
        lines.append(f"aliases = {{ {aliases} }}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


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
        return float(value)
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
    for address in config.server.listen:
        parse_listen(address, "server.listen")
    if config.server.workers < 0:
        raise ConfigError("server.workers: must be 0 (one per CPU) or more")
    if config.server.log_level not in ("trace", "debug", "info", "warning", "error"):
        raise ConfigError(
            "server.log_level: one of trace, debug, info, warning, error"
        )
    if config.maildir.sync not in ("syncfs", "fsync"):
        raise ConfigError('maildir.sync: "syncfs" or "fsync"')
    for f in dataclasses.fields(LimitsConfig):
        if getattr(config.limits, f.name) <= 0:
            raise ConfigError(f"limits.{f.name}: must be greater than 0")
    if config.limits.max_command_octets < 512:
        raise ConfigError("limits.max_command_octets: RFC 5321 requires at least 512")
    if config.limits.max_data_line_octets < 1000:
        raise ConfigError(
            "limits.max_data_line_octets: RFC 5321 requires at least 1000"
        )
    for name, domain in config.domains.items():
        if name != name.lower() or name.endswith(".") or not name:
            raise ConfigError(f"domains.{name}: write domains in lower case, no dot")
        for mailbox in domain.mailboxes:
            if not mailbox or "/" in mailbox or mailbox.startswith("."):
                raise ConfigError(f"domains.{name}.mailboxes: bad name {mailbox!r}")


def parse_listen(address: str, key: str) -> tuple[str, int]:
    """``"127.0.0.1:25"`` or ``"[::1]:25"`` to a (host, port) pair."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {address!r} is not host:port")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{key}: {host!r} is not an IP address") from None
    return host, int(port)
