"""The configuration file: defaults, the to_toml round trip, errors that name keys."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import mailfast
from mailfast import config
from mailfast.cli import EXIT_CONFIG
from mailfast.config import Config, ConfigError, DomainConfig

SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "domains"]

# Values unlike the defaults that validation accepts, for the keys whose
# type alone does not give one; numbers are derived in non_default_value.
CHOSEN_VALUES = {
    "server.hostname": 'mx "one" \\ grüße.example',
    "server.listen": ("127.0.0.1:25", "[::1]:2525"),
    "server.log_level": "debug",
    "server.spool_dir": "/srv/mailfast/spool",
    "maildir.root": "/srv/mailfast/mail",
    "maildir.sync": "fsync",
    "relay.trusted_networks": ("192.0.2.0/24", "2001:db8::/32"),
    "limits.per_ip_exempt_networks": ("192.0.2.0/24",),
    "relay.smarthost": "[smtp.example.net]:587",
    "relay.nameservers": ("192.0.2.53", "[2001:db8::53]:5353"),
    "relay.mx_cache_path": "/srv/mailfast/mx.sqlite",
    "relay.tls": "none",
    "relay.tls_policy": {"example.net": "encrypt", "example.org": "none"},
    "queue.directory": "/srv/mailfast/queue",
    "server.submission": ("127.0.0.1:587",),
    "server.submissions": ("127.0.0.1:465",),
    "server.user": "nobody",
    "auth.users_file": "/srv/mailfast/users",
    "auth.allow_plaintext_on_loopback": True,
    "auth.offer_on_smtp": True,
    "auth.sender_must_match": False,
}

DOMAINS = {
    "example.com": DomainConfig(
        mailboxes=("alice", "bob"),
        aliases={"postmaster": ("alice",), "first.last": ("alice", "bob@example.net")},
        catch_all="bob",
    ),
    "example.net": DomainConfig(mailboxes=("bob",)),
}


def non_default_value(key: str, hint: object, default: object) -> object:
    if key in CHOSEN_VALUES:
        return CHOSEN_VALUES[key]
    if key.startswith("tls.") and key in TLS_FILES:
        return TLS_FILES[key]
    if hint is int:
        return default + 1
    if hint is float:
        return default + 1.5
    raise AssertionError(f"{key}: give it a value in CHOSEN_VALUES")


def _write_test_certificate() -> dict[str, str]:
    """A certificate and key that load, made once for the whole module."""
    import tempfile

    import trustme

    directory = tempfile.mkdtemp(prefix="mailfast-config-test-")
    certificate = trustme.CA().issue_cert("mx.example")
    paths = {
        "tls.certificate": os.path.join(directory, "cert.pem"),
        "tls.key": os.path.join(directory, "key.pem"),
    }
    certificate.cert_chain_pems[0].write_to_path(paths["tls.certificate"])
    certificate.private_key_pem.write_to_path(paths["tls.key"])
    return paths


TLS_FILES = _write_test_certificate()


def every_key_changed() -> Config:
    """A Config in which no key has its default value."""
    sections = {}
    for section in SECTIONS:
        defaults = getattr(Config(), section)
        hints = typing.get_type_hints(type(defaults))
        values = {}
        for f in dataclasses.fields(defaults):
            key = f"{section}.{f.name}"
            default = getattr(defaults, f.name)
            values[f.name] = non_default_value(key, hints[f.name], default)
            assert values[f.name] != default, key
        sections[section] = type(defaults)(**values)
    return Config(**sections, domains=DOMAINS)


def test_embedded_default_loads() -> None:
    default = config.load(None)
    assert default.server.listen == ("127.0.0.1:2525",)
    assert default.maildir.root == "var/mail"
    assert default.limits == config.LimitsConfig()
    assert list(default.domains) == ["localhost"]
    localhost = default.domains["localhost"]
    assert localhost.mailboxes == ("alice", "bob")
    assert localhost.aliases["postmaster"] == ("alice",)


def test_empty_file_is_all_defaults() -> None:
    assert config.parse("") == Config()


def test_every_key_round_trips_through_to_toml() -> None:
    changed = every_key_changed()
    text = config.to_toml(changed)
    assert config.parse(text) == changed
    assert config.to_toml(config.parse(text)) == text


def test_defaults_round_trip_through_to_toml() -> None:
    default = config.load(None)
    assert config.parse(config.to_toml(default)) == default


STRINGS = {
    "quotes and backslashes": 'say "hi" \\ C:\\mail',
    "non-ASCII": "grüße.example",
    "tab": "a\tb",
    # TOML basic strings must escape control characters other than tab.
    "control characters": "line\nbreak \x1b[0m \x7f",
}


@pytest.mark.parametrize("text", STRINGS.values(), ids=STRINGS.keys())
def test_strings_round_trip_through_to_toml(text: str) -> None:
    quirky = Config(
        server=config.ServerConfig(hostname=text),
        domains={"localhost": DomainConfig(mailboxes=("alice",), catch_all=text)},
    )
    assert config.parse(config.to_toml(quirky)) == quirky


def test_numbers_and_lists_are_converted_where_unambiguous() -> None:
    parsed = config.parse(
        """
        [server]
        listen = "[::1]:25"
        shutdown_grace_s = 10

        [domains.localhost]
        aliases = { team = "alice" }
        """
    )
    assert parsed.server.listen == ("[::1]:25",)
    assert parsed.server.shutdown_grace_s == 10.0
    assert type(parsed.server.shutdown_grace_s) is float
    assert parsed.domains["localhost"].aliases == {"team": ("alice",)}
    assert config.parse_listen("[::1]:25", "server.listen") == ("::1", 25)


# Each refusal names the key, so the operator knows which line to fix.
REFUSED = {
    "typo in a key": (
        "[limits]\nmax_recipents = 5",
        "limits.max_recipents: unknown key",
    ),
    "unknown section": ("[limit]\nmax_recipients = 5", "limit: unknown key"),
    "unknown key of a domain": (
        '[domains.localhost]\nmailbox = ["alice"]',
        "domains.localhost.mailbox: unknown key",
    ),
    "string for an integer": (
        '[limits]\nmax_recipients = "100"',
        "limits.max_recipients: expected an integer",
    ),
    "boolean for an integer": (
        "[limits]\nmax_recipients = true",
        "limits.max_recipients: expected an integer",
    ),
    "fraction for an integer": (
        "[server]\nworkers = 1.5",
        "server.workers: expected an integer",
    ),
    "number for a string": (
        "[server]\nhostname = 42",
        "server.hostname: expected a string",
    ),
    "number for a list": ("[server]\nlisten = 25", "server.listen: expected a list"),
    "number in a list": ("[server]\nlisten = [25]", "server.listen: expected a string"),
    "value for a section": ("limits = 5", "limits: expected a table"),
    "list for a domain": ('[domains]\nlocalhost = ["alice"]', "domains.localhost"),
    "list for the aliases": (
        '[domains.localhost]\naliases = ["alice"]',
        "domains.localhost.aliases: expected a table",
    ),
    "number in an alias": (
        "[domains.localhost]\naliases = { team = [1] }",
        "domains.localhost.aliases.team: expected a string",
    ),
    "listen on a host name": ('[server]\nlisten = ["localhost:25"]', "server.listen"),
    "listen without port": ('[server]\nlisten = ["127.0.0.1"]', "server.listen"),
    "listen on port 0": ('[server]\nlisten = ["127.0.0.1:0"]', "server.listen"),
    "listen on port 65536": ('[server]\nlisten = ["[::1]:65536"]', "server.listen"),
    "negative workers": ("[server]\nworkers = -1", "server.workers"),
    "unknown log level": ('[server]\nlog_level = "verbose"', "server.log_level"),
    "unknown sync method": ('[maildir]\nsync = "fdatasync"', "maildir.sync"),
    "zero limit": ("[limits]\nmax_recipients = 0", "limits.max_recipients"),
    "command line limit under 512": (
        "[limits]\nmax_command_octets = 511",
        "limits.max_command_octets",
    ),
    "data line limit under 1000": (
        "[limits]\nmax_data_line_octets = 999",
        "limits.max_data_line_octets",
    ),
    "domain in capitals": ('[domains."Example.com"]', "domains.Example.com"),
    "mailbox with a slash": (
        '[domains.localhost]\nmailboxes = ["../alice"]',
        "domains.localhost.mailboxes",
    ),
}


@pytest.mark.parametrize(("text", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config.parse(text, "site.toml")
    assert str(refused.value).startswith("site.toml: ")
    assert message in str(refused.value)


def test_toml_syntax_error_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^site\.toml: "):
        config.parse("[server\n", "site.toml")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(missing))


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m mailfast check-config --config path``, as an operator runs it."""
    source_root = Path(mailfast.__file__).resolve().parent.parent
    environment = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run(
        [sys.executable, "-m", "mailfast", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=path.parent,
        env=environment,
        timeout=30,
    )


def test_check_config_refuses_a_typo(tmp_path: Path) -> None:
    path = tmp_path / "mailfast.toml"
    path.write_text("[limits]\nmax_recipents = 5\n")
    result = check_config(path)
    assert result.returncode == EXIT_CONFIG
    assert "limits.max_recipents: unknown key" in result.stderr
    assert str(path) in result.stderr
    assert result.stdout == ""


def test_check_config_prints_the_effective_configuration(tmp_path: Path) -> None:
    path = tmp_path / "mailfast.toml"
    path.write_text(
        "[limits]\nmax_recipients = 5\n\n"
        '[domains."example.com"]\nmailboxes = ["alice"]\n'
    )
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    printed = config.parse(result.stdout)
    assert printed == config.load(str(path))
    assert printed.limits.max_recipients == 5
    assert printed.domains["example.com"].mailboxes == ("alice",)
