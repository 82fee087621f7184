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
    "server.hostname": "mx-1.Example.NET",
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
    "auth.failures_path": "/var/lib/mailfast/login-failures.sqlite",
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
        server=config.ServerConfig(spool_dir=text),
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
    # Workers write the host name into banners and headers as ASCII.
    "non-ASCII host name": (
        '[server]\nhostname = "mx.tëst"',
        "server.hostname: 'mx.tëst' is not ASCII",
    ),
    "CR LF in the host name": (
        '[server]\nhostname = "mx.test\\r\\n250 hi"',
        "server.hostname: 'mx.test\\r\\n250 hi' has a bad label",
    ),
    "space in the host name": (
        '[server]\nhostname = "mx test"',
        "server.hostname: 'mx test' has a bad label",
    ),
    "control character in the host name": (
        '[server]\nhostname = "mx\\u0000.test"',
        "server.hostname: 'mx\\x00.test' has a bad label",
    ),
    "empty label in the host name": (
        '[server]\nhostname = "mx..test"',
        "server.hostname: 'mx..test' has an empty label",
    ),
    "host name label of 64 octets": (
        f'[server]\nhostname = "{"a" * 64}.test"',
        "server.hostname: '" + "a" * 64 + ".test' has a label longer than 63",
    ),
    "host name of 254 octets": (
        f'[server]\nhostname = "{".".join(["a" * 63] * 4)}.b"',
        "is longer than 253 octets",
    ),
    "hyphen first in a host name label": (
        '[server]\nhostname = "-mx.test"',
        "server.hostname: '-mx.test' has a bad label",
    ),
    "nan timeout": (
        "[limits]\ncommand_timeout_s = nan",
        "limits.command_timeout_s: must be a finite number",
    ),
    "infinite timeout": (
        "[relay]\nconnect_timeout_s = inf",
        "relay.connect_timeout_s: must be a finite number",
    ),
    "negative infinite grace": (
        "[server]\nshutdown_grace_s = -inf",
        "server.shutdown_grace_s: must be a finite number",
    ),
    "integer too large for a number": (
        f"[server]\nshutdown_grace_s = {10**400}",
        "server.shutdown_grace_s: " + str(10**400) + " is too large",
    ),
    "zero worker timeout": (
        "[server]\nworker_timeout_s = 0",
        "server.worker_timeout_s: must be greater than 0",
    ),
    "worker timeout within a heartbeat": (
        "[server]\nworker_timeout_s = 1",
        "server.worker_timeout_s: must be greater than the heartbeat interval",
    ),
    "negative grace": (
        "[server]\nshutdown_grace_s = -1",
        "server.shutdown_grace_s: must not be negative",
    ),
    "negative relay timeout": (
        "[relay]\ndns_timeout_s = -5",
        "relay.dns_timeout_s: must not be negative",
    ),
    "zero relay timeout": (
        "[relay]\nfinal_timeout_s = 0",
        "relay.final_timeout_s: must be greater than 0",
    ),
    "zero connections per destination": (
        "[relay]\nmax_per_destination = 0",
        "relay.max_per_destination: must be greater than 0",
    ),
    "zero Received headers": (
        "[relay]\nmax_received_headers = 0",
        "relay.max_received_headers: must be greater than 0",
    ),
    "zero cache maximum TTL": (
        "[relay]\nmx_cache_min_ttl_s = 0\nmx_cache_max_ttl_s = 0",
        "relay.mx_cache_max_ttl_s: must be greater than 0",
    ),
    "negative cache TTL": (
        "[relay]\nmx_cache_negative_ttl_s = -1",
        "relay.mx_cache_negative_ttl_s: must not be negative",
    ),
    "negative TLS handshake timeout": (
        "[tls]\nhandshake_timeout_s = -30",
        "tls.handshake_timeout_s: must not be negative",
    ),
    "zero TLS handshake timeout": (
        "[tls]\nhandshake_timeout_s = 0",
        "tls.handshake_timeout_s: must be greater than 0",
    ),
    "zero login failures": (
        "[auth]\nmax_failures = 0",
        "auth.max_failures: must be greater than 0",
    ),
    "nan queue backoff": (
        "[queue]\nmin_backoff_s = nan",
        "queue.min_backoff_s: must be a finite number",
    ),
    "cache minimum TTL over the maximum": (
        "[relay]\nmx_cache_min_ttl_s = 3600\nmx_cache_max_ttl_s = 60",
        "relay.mx_cache_min_ttl_s: must not exceed relay.mx_cache_max_ttl_s",
    ),
    "smarthost port out of range": (
        '[relay]\nsmarthost = "h:99999"',
        "relay.smarthost: port 99999 is not 1 to 65535",
    ),
    "smarthost port 0": (
        '[relay]\nsmarthost = "[h]:0"',
        "relay.smarthost: port 0 is not 1 to 65535",
    ),
    "smarthost bracket not closed": (
        '[relay]\nsmarthost = "[::1"',
        "relay.smarthost: '[::1' is not host, [host] or ip",
    ),
    "smarthost with an empty port": (
        '[relay]\nsmarthost = "h:"',
        "relay.smarthost: 'h:' is not host, [host] or ip",
    ),
    "smarthost with a port of letters": (
        '[relay]\nsmarthost = "[h]:smtp"',
        "relay.smarthost: '[h]:smtp' is not host, [host] or ip",
    ),
    "smarthost without a host": (
        '[relay]\nsmarthost = ":25"',
        "relay.smarthost: ':25' has no host",
    ),
    "smarthost with empty brackets": (
        '[relay]\nsmarthost = "[]:25"',
        "relay.smarthost: host '' has an empty label",
    ),
    "non-ASCII smarthost": (
        '[relay]\nsmarthost = "relais.grüße.example"',
        "relay.smarthost: 'relais.grüße.example' is not ASCII",
    ),
    "smarthost with a space": (
        '[relay]\nsmarthost = "relay example"',
        "relay.smarthost: host 'relay example' has a bad label",
    ),
    "smarthost IPv6 literal that is not IPv6": (
        '[relay]\nsmarthost = "[IPv6:192.0.2.1]"',
        "relay.smarthost: '192.0.2.1' is not an IPv6 address",
    ),
    "relay port 0": ("[relay]\nport = 0", "relay.port"),
    "relay port 65536": ("[relay]\nport = 65536", "relay.port: not a port number"),
    "listen port in superscript digits": (
        '[server]\nlisten = ["127.0.0.1:²"]',
        "server.listen: '127.0.0.1:²' is not host:port",
    ),
    "submission on port 65536": (
        '[server]\nsubmission = ["127.0.0.1:65536"]',
        "server.submission",
    ),
    # Domains name directories under maildir.root.
    "domain with a slash": (
        '[domains."example.com/x"]',
        "domains.example.com/x: has a bad label 'com/x'",
    ),
    "domain climbing out of the maildir root": (
        '[domains."../etc"]',
        "domains.../etc: has an empty label",
    ),
    "domain of two dots": ('[domains.".."]', "domains...: write domains in lower"),
    "domain with a leading dot": (
        '[domains.".example.com"]',
        "domains..example.com: has an empty label",
    ),
    "domain with an empty label": (
        '[domains."example..com"]',
        "domains.example..com: has an empty label",
    ),
    "domain with an underscore": (
        '[domains."mail_example.com"]',
        "domains.mail_example.com: has a bad label 'mail_example'",
    ),
    "domain as a U-label": (
        '[domains."bücher.example"]',
        "domains.bücher.example: is not ASCII (write internationalized names as xn--",
    ),
    "domain in capitals with a trailing dot": (
        '[domains."example.com."]',
        "domains.example.com.: write domains in lower case, no dot",
    ),
}


@pytest.mark.parametrize(("text", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config.parse(text, "site.toml")
    assert str(refused.value).startswith("site.toml: ")
    assert message in str(refused.value)


ACCEPTED = {
    "no host name: the machine's FQDN": '[server]\nhostname = ""',
    "host name in capitals": '[server]\nhostname = "MX1.Example.net"',
    "host name of 253 octets": (
        f'[server]\nhostname = "{".".join(["a" * 63] * 3)}.{"b" * 61}"'
    ),
    "zero grace: drain at once": "[server]\nshutdown_grace_s = 0",
    "zero workers: one per CPU": "[server]\nworkers = 0",
    "zero connection limits: unlimited": (
        "[limits]\nmax_connections = 0\nmax_connections_per_ip = 0\n"
        "max_connection_rate_per_ip = 0"
    ),
    "zero TTL floor and negative TTL": (
        "[relay]\nmx_cache_min_ttl_s = 0\nmx_cache_negative_ttl_s = 0"
    ),
    "equal TTL floor and ceiling": (
        "[relay]\nmx_cache_min_ttl_s = 300\nmx_cache_max_ttl_s = 300"
    ),
    "zero idle reuse: never reuse": "[relay]\nidle_reuse_s = 0",
    "smarthost name": '[relay]\nsmarthost = "smtp.example.net"',
    "smarthost name with a final dot": '[relay]\nsmarthost = "smtp.example.net."',
    "smarthost name and port": '[relay]\nsmarthost = "smtp.example.net:587"',
    "smarthost in brackets with port": '[relay]\nsmarthost = "[smtp.example.net]:587"',
    "smarthost IPv4 with port": '[relay]\nsmarthost = "192.0.2.25:2525"',
    "smarthost bare IPv6": '[relay]\nsmarthost = "2001:db8::25"',
    "smarthost IPv6 in brackets": '[relay]\nsmarthost = "[2001:db8::25]:10025"',
    "smarthost IPv6 literal": '[relay]\nsmarthost = "[IPv6:2001:db8::25]"',
    "smarthost A-label": '[relay]\nsmarthost = "xn--bcher-kva.example"',
    "domain as an A-label": '[domains."xn--bcher-kva.example"]',
    "domain of one label": "[domains.localhost]",
    "domain with hyphens and digits": '[domains."mail-1.example-2.com"]',
}


@pytest.mark.parametrize("text", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(text: str) -> None:
    config.parse(text, "site.toml")


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


PATH_MISTAKES = {
    "a file as the Maildir root": ("maildir", "root", "file", "is not a directory"),
    "a file as the spool": ("server", "spool_dir", "file", "is not a directory"),
    "a file as the queue": ("queue", "directory", "file", "is not a directory"),
    "a directory as the users file": ("auth", "users_file", "dir", "is a directory"),
    "a directory as the MX cache": ("relay", "mx_cache_path", "dir", "is a directory"),
    "a users file under a file": (
        "auth",
        "users_file",
        "file/users",
        "is not a directory",
    ),
}


@pytest.mark.parametrize(
    ("section", "key", "where", "message"),
    PATH_MISTAKES.values(),
    ids=PATH_MISTAKES.keys(),
)
def test_a_path_of_the_wrong_kind_is_refused(
    tmp_path, section: str, key: str, where: str, message: str
) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    text = f'[{section}]\n{key} = "{tmp_path / where}"'
    with pytest.raises(ConfigError) as refused:
        config.parse(text, "site.toml")
    assert f"{section}.{key}: " in str(refused.value)
    assert message in str(refused.value)


def test_warnings_name_what_drops_mail() -> None:
    parsed = config.parse(
        """
        [server]
        submission = ["127.0.0.1:2587"]

        [domains."example.com"]
        mailboxes = ["Alice"]
        catch_all = "../../../tmp/x"
        aliases = { sales = ["alice", "bob"], out = "someone@example.org" }
        """
    )
    assert config.warnings(parsed) == [
        "server.submission: no tls.certificate, so no AUTH: clients there get 530"
        " for every MAIL",
        "domains.example.com.aliases.sales: 'bob' is no mailbox or alias of"
        " example.com; the alias's other members get their copies, this one none",
        "domains.example.com.aliases.out: 'someone@example.org' is not in a local"
        " domain (mailfast does not forward); mail for it is refused",
        "domains.example.com.catch_all: '../../../tmp/x' is no mailbox or alias of"
        " example.com; mail for it is refused",
    ]
    assert config.warnings(config.parse("")) == []
