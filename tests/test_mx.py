"""MX resolution against a real DNS server on loopback (tests/dnsserver.py)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import uvloop

from mailfast.mx import MXResolver, Route
from mailfast.mxcache import SERVFAIL_TTL_S, CachedAnswer, MXCache
from mailfast.outcome import Status
from mailfast.relaymodel import MXHost
from tests.dnsserver import ZoneServer

SOA_TTL_S = 3600
SOA_MINIMUM_S = 120  # RFC 2308: the negative TTL, being below the SOA's TTL

RECORDS = {
    "test": {
        "SOA": (SOA_TTL_S, f"ns.test hostmaster.test 1 3600 600 86400 {SOA_MINIMUM_S}")
    },
    "ordered.test": {"MX": ["20 mx-b.test", "10 mx-a.test", "30 mx-c.test"]},
    "equal.test": {"MX": ["10 mx-a.test", "10 mx-b.test", "20 mx-c.test"]},
    "mx-a.test": {"A": "192.0.2.1"},
    "mx-b.test": {"A": "192.0.2.2"},
    "mx-c.test": {"A": "192.0.2.3"},
    "dual.test": {"MX": "10 dual-mx.test"},
    "dual-mx.test": {"A": "192.0.2.10", "AAAA": "2001:db8::10"},
    "implicit.test": {"A": "192.0.2.20", "AAAA": "2001:db8::20"},
    "bare.test": {"TXT": '"no mail here"'},
    "null.test": {"MX": "0 ."},
    "alias.test": {"CNAME": "ordered.test"},
    "cname-mx.test": {"MX": "10 mx-alias.test"},
    "mx-alias.test": {"CNAME": "mx-a.test"},
    "addressless.test": {"MX": ["10 nowhere.test", "20 mx-bare.test"]},
    "mx-bare.test": {"TXT": '"no address"'},
    "partial.test": {"MX": ["10 mx-flaky.test", "20 mx-a.test"]},
    "flaky-only.test": {"MX": ["10 mx-flaky.test", "20 nowhere.test"]},
    "mx-flaky.test": {"A": "192.0.2.40"},
    "loop.test": {
        "MX": ["10 mx-a.test", "20 relay.ours.test", "20 mx-b.test", "30 mx-c.test"]
    },
    "loop-first.test": {"MX": ["10 relay.ours.test", "20 mx-a.test"]},
    "relay.ours.test": {"A": "192.0.2.99"},
    "smarthost.test": {"MX": "10 mx-a.test", "A": "192.0.2.50"},
    "xn--bcher-kva.test": {"MX": "10 mx-a.test"},
    "ttl.test": {"MX": (30, "10 mx-ttl.test")},
    "mx-ttl.test": {"A": (600, "192.0.2.30")},
    # No SOA above these names: negative answers come without a TTL.
    "nosoa": {"TXT": '"a zone without SOA"'},
}

A_HOST = MXHost("mx-a.test", 10, ("192.0.2.1",))
B_HOST = MXHost("mx-b.test", 20, ("192.0.2.2",))
C_HOST = MXHost("mx-c.test", 30, ("192.0.2.3",))


@pytest.fixture
def server():
    with ZoneServer(RECORDS) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def cache_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "mxcache.sqlite")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(cache_path: str, clock: Clock):
    cache = MXCache(cache_path, clock=clock)
    yield cache
    cache.close()


def make_resolver(server: ZoneServer, cache: MXCache, **options) -> MXResolver:
    options.setdefault("timeout_s", 1.0)
    return MXResolver([server.nameserver], cache, **options)


def route(resolver: MXResolver, domain: str) -> Route:
    return asyncio.run(resolver.route(domain))


def assert_outcome(result: Route, status: Status, enhanced: str) -> None:
    assert result.hosts == []
    assert result.outcome is not None
    assert (result.outcome.status, result.outcome.enhanced) == (status, enhanced)


# Ordering (RFC 5321 §5.1).


def test_hosts_in_preference_order(server, cache):
    result = route(make_resolver(server, cache), "ordered.test")
    assert result == Route([A_HOST, B_HOST, C_HOST], None)


def test_equal_preferences_are_shuffled(server, cache):
    orders = set()
    for seed in range(20):
        resolver = make_resolver(server, cache, rng=random.Random(seed))
        names = [host.name for host in route(resolver, "equal.test").hosts]
        assert names[2] == "mx-c.test"
        orders.add(tuple(names[:2]))
    assert orders == {("mx-a.test", "mx-b.test"), ("mx-b.test", "mx-a.test")}
    assert server.count("equal.test", "MX") == 1  # the other 19 came from the cache


def test_same_seed_same_order(server, cache):
    first = route(make_resolver(server, cache, rng=random.Random(7)), "equal.test")
    again = route(make_resolver(server, cache, rng=random.Random(7)), "equal.test")
    assert first == again


def test_ipv6_addresses_before_ipv4(server, cache):
    result = route(make_resolver(server, cache), "dual.test")
    assert result.hosts == [MXHost("dual-mx.test", 10, ("2001:db8::10", "192.0.2.10"))]
    assert server.count("dual-mx.test", "AAAA") == 1
    assert server.count("dual-mx.test", "A") == 1


def test_names_compared_in_lower_case_without_final_dot(server, cache):
    resolver = make_resolver(server, cache)
    assert route(resolver, "Ordered.TEST.").hosts == [A_HOST, B_HOST, C_HOST]
    assert route(resolver, "ordered.test").hosts == [A_HOST, B_HOST, C_HOST]
    assert server.count("ordered.test", "MX") == 1


def test_utf8_domain_looked_up_as_a_labels(server, cache):
    # SMTPUTF8 (RFC 6531) recipients carry U-labels; DNS wants A-labels.
    result = route(make_resolver(server, cache), "Bücher.test")
    assert result == Route([A_HOST], None)
    assert server.count("xn--bcher-kva.test", "MX") == 1


def test_invalid_domain_fails(server, cache):
    resolver = make_resolver(server, cache)
    assert_outcome(route(resolver, "a..b.test"), Status.FAILED, "5.1.2")
    assert_outcome(route(resolver, "[not-an-address]"), Status.FAILED, "5.1.2")
    assert server.count() == 0


# What the MX answer says.


def test_implicit_mx_is_the_domain_itself(server, cache):
    result = route(make_resolver(server, cache), "implicit.test")
    assert result.hosts == [MXHost("implicit.test", 0, ("2001:db8::20", "192.0.2.20"))]


def test_no_mx_and_no_address_fails(server, cache):
    result = route(make_resolver(server, cache), "bare.test")
    assert_outcome(result, Status.FAILED, "5.1.2")


def test_null_mx_fails_without_address_lookups(server, cache):
    result = route(make_resolver(server, cache), "null.test")
    assert_outcome(result, Status.FAILED, "5.1.10")
    assert server.count(rdtype="A") == server.count(rdtype="AAAA") == 0


def test_nxdomain_fails(server, cache):
    result = route(make_resolver(server, cache), "missing.test")
    assert_outcome(result, Status.FAILED, "5.1.2")
    assert "not found" in result.outcome.text


def test_servfail_defers_at_once(server, cache):
    server.fail("ordered.test", "MX")
    started = time.monotonic()
    result = route(make_resolver(server, cache, timeout_s=1.0), "ordered.test")
    assert time.monotonic() - started < 0.5
    assert_outcome(result, Status.DEFERRED, "4.4.3")


def test_silent_nameserver_defers_within_timeout(cache):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = MXResolver([silent.getsockname()], cache, timeout_s=1.0)
        started = time.monotonic()
        result = route(resolver, "ordered.test")
        elapsed = time.monotonic() - started
    assert_outcome(result, Status.DEFERRED, "4.4.3")
    assert 0.9 <= elapsed < 2.5


def test_cname_to_a_domain_with_mx(server, cache):
    result = route(make_resolver(server, cache), "alias.test")
    assert result.hosts == [A_HOST, B_HOST, C_HOST]


def test_mx_exchange_resolved_through_cname(server, cache):
    result = route(make_resolver(server, cache), "cname-mx.test")
    assert result.hosts == [MXHost("mx-alias.test", 10, ("192.0.2.1",))]


def test_address_literal_domain(server, cache):
    resolver = make_resolver(server, cache)
    result = route(resolver, "[IPv6:2001:DB8::7]")
    assert result.hosts == [MXHost("2001:db8::7", 0, ("2001:db8::7",))]
    assert route(resolver, "[192.0.2.7]").hosts == [
        MXHost("192.0.2.7", 0, ("192.0.2.7",))
    ]
    assert server.count() == 0


def test_nameserver_on_ipv6_loopback(cache):
    try:
        server = ZoneServer(RECORDS, host="::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        result = route(make_resolver(server, cache), "dual.test")
    finally:
        server.stop()
    assert result.hosts == [MXHost("dual-mx.test", 10, ("2001:db8::10", "192.0.2.10"))]


def test_zone_given_as_zone_file_text(cache):
    zone = """
    $TTL 300
    @       SOA   ns hostmaster 1 3600 600 86400 60
    @       MX    10 mail
    @       MX    20 mail.backup.example.
    mail    A     198.51.100.1
    """
    with ZoneServer.from_zone(textwrap.dedent(zone), "zone.example") as server:
        result = route(make_resolver(server, cache), "zone.example")
    assert result == Route([MXHost("mail.zone.example", 10, ("198.51.100.1",))], None)


def test_large_answer_retried_over_tcp(server, cache):
    exchangers = [
        f"{n} mx-{n}.a-rather-long-name-to-fill-the-answer.test" for n in range(60)
    ]
    server.set("many.test", "MX", exchangers + ["5 mx-a.test"])
    result = route(make_resolver(server, cache), "many.test")
    assert result.hosts == [MXHost("mx-a.test", 5, ("192.0.2.1",))]
    assert server.count("many.test", "MX") == 2  # UDP with TC set, then TCP


# Hosts without addresses.


def test_hosts_without_address_fail_permanently(server, cache):
    result = route(make_resolver(server, cache), "addressless.test")
    assert_outcome(result, Status.FAILED, "5.4.4")


def test_host_failing_temporarily_is_skipped(server, cache):
    server.fail("mx-flaky.test")
    result = route(make_resolver(server, cache), "partial.test")
    assert result == Route([MXHost("mx-a.test", 20, ("192.0.2.1",))], None)


def test_host_whose_lookups_go_unanswered_is_skipped(server, cache):
    server.drop("mx-flaky.test")
    started = time.monotonic()
    result = route(make_resolver(server, cache, timeout_s=0.5), "partial.test")
    assert time.monotonic() - started < 1.5
    assert result == Route([MXHost("mx-a.test", 20, ("192.0.2.1",))], None)
    assert server.count("mx-flaky.test", "A") >= 1


def test_no_address_with_a_temporary_failure_defers(server, cache):
    server.fail("mx-flaky.test", "A")
    result = route(make_resolver(server, cache), "flaky-only.test")
    assert_outcome(result, Status.DEFERRED, "4.4.3")


# Mail loops.


def test_hosts_from_our_preference_on_are_cut_by_name(server, cache):
    resolver = make_resolver(server, cache, our_names=frozenset({"relay.ours.test"}))
    assert route(resolver, "loop.test") == Route([A_HOST], None)
    assert server.count("relay.ours.test") == 0  # cut before any lookup


def test_loop_by_name_fails(server, cache):
    resolver = make_resolver(server, cache, our_names=frozenset({"relay.ours.test"}))
    result = route(resolver, "loop-first.test")
    assert_outcome(result, Status.FAILED, "5.4.6")
    assert result.outcome.text == "mail for loop-first.test loops back to myself"


def test_hosts_from_our_preference_on_are_cut_by_address(server, cache):
    resolver = make_resolver(server, cache, our_addresses=frozenset({"192.0.2.2"}))
    assert route(resolver, "ordered.test") == Route([A_HOST], None)


def test_loop_by_address_fails(server, cache):
    resolver = make_resolver(server, cache, our_addresses=frozenset({"192.0.2.1"}))
    assert_outcome(route(resolver, "ordered.test"), Status.FAILED, "5.4.6")
    resolver = make_resolver(server, cache, our_addresses=frozenset({"192.0.2.20"}))
    assert_outcome(route(resolver, "implicit.test"), Status.FAILED, "5.4.6")


# Smarthosts (relayhost forms).


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("192.0.2.5", "192.0.2.5"),
        ("[192.0.2.5]", "192.0.2.5"),
        ("2001:db8::5", "2001:db8::5"),
        ("[2001:db8::5]", "2001:db8::5"),
        ("[IPv6:2001:db8::5]", "2001:db8::5"),
    ],
)
def test_smarthost_ip_literal(server, cache, host, address):
    result = asyncio.run(make_resolver(server, cache).route_smarthost(host, 587))
    assert result == Route([MXHost(address, 0, (address,))], None)
    assert server.count() == 0


def test_smarthost_name_in_brackets_skips_mx(server, cache):
    resolver = make_resolver(server, cache)
    result = asyncio.run(resolver.route_smarthost("[smarthost.test]", 25))
    assert result == Route([MXHost("smarthost.test", 0, ("192.0.2.50",))], None)
    assert server.count(rdtype="MX") == 0


def test_smarthost_bare_name_uses_mx(server, cache):
    resolver = make_resolver(server, cache)
    result = asyncio.run(resolver.route_smarthost("smarthost.test", 25))
    assert result == Route([A_HOST], None)


def test_smarthost_failures_defer(server, cache):
    resolver = make_resolver(server, cache)
    result = asyncio.run(resolver.route_smarthost("[missing.test]", 25))
    assert_outcome(result, Status.DEFERRED, "4.1.2")
    result = asyncio.run(resolver.route_smarthost("missing.test", 25))
    assert_outcome(result, Status.DEFERRED, "4.1.2")


def test_smarthost_loop_only_on_our_port(server, cache):
    resolver = make_resolver(server, cache, our_addresses=frozenset({"127.0.0.1"}))
    result = asyncio.run(resolver.route_smarthost("[127.0.0.1]", 25))
    assert_outcome(result, Status.DEFERRED, "4.4.6")
    result = asyncio.run(resolver.route_smarthost("[127.0.0.1]", 10025))
    assert result.hosts == [MXHost("127.0.0.1", 0, ("127.0.0.1",))]


# The shared cache.

CHILD_SCRIPT = """
import asyncio, json, sys
from mailfast.mx import MXResolver
from mailfast.mxcache import MXCache

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cache = MXCache(path)
resolver = MXResolver([(host, port)], cache, timeout_s=1.0)
route = asyncio.run(resolver.route("ordered.test"))
cache.close()
print(json.dumps({"hosts": [h.name for h in route.hosts], **resolver.stats}))
"""


def test_cache_shared_across_processes(server, cache_path):
    arguments = [server.host, str(server.port), cache_path]
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD_SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert '"hosts": ["mx-a.test", "mx-b.test", "mx-c.test"]' in child.stdout
    assert server.count() == 7  # MX, then AAAA and A of three hosts

    server.reset_counts()
    cache = MXCache(cache_path)
    try:
        resolver = make_resolver(server, cache)
        assert route(resolver, "ordered.test").hosts == [A_HOST, B_HOST, C_HOST]
    finally:
        cache.close()
    assert server.count() == 0
    assert resolver.stats["hits"] == 7
    assert resolver.stats["queries"] == 0


def test_cache_reopened_after_fork(cache_path):
    cache = MXCache(cache_path)
    try:
        assert cache.get("forked.test", "A") is None  # the parent's connection
        pid = os.fork()
        if pid == 0:
            # The child: it must open its own connection, and never return
            # into pytest.
            code = 2
            try:
                cache.put("forked.test", "A", CachedAnswer("ok", ["192.0.2.8"]), 300)
                code = 0 if cache.get("forked.test", "A") is not None else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert cache.get("forked.test", "A") == CachedAnswer("ok", ["192.0.2.8"])
    finally:
        cache.close()


def test_positive_answer_expires_with_its_ttl(server, cache_path, clock):
    cache = MXCache(cache_path, min_ttl_s=0, clock=clock)
    try:
        resolver = make_resolver(server, cache)
        expected = Route([MXHost("mx-ttl.test", 10, ("192.0.2.30",))], None)
        assert route(resolver, "ttl.test") == expected
        clock.now += 29
        assert route(resolver, "ttl.test") == expected
        assert server.count("ttl.test", "MX") == 1
        clock.now += 2
        assert route(resolver, "ttl.test") == expected
        assert server.count("ttl.test", "MX") == 2
        assert server.count("mx-ttl.test", "A") == 1  # its TTL is 600 s
    finally:
        cache.close()


def test_ttl_clamped_to_minimum(server, cache_path, clock):
    cache = MXCache(cache_path, min_ttl_s=60, clock=clock)
    try:
        resolver = make_resolver(server, cache)
        route(resolver, "ttl.test")
        clock.now += 59
        route(resolver, "ttl.test")
        assert server.count("ttl.test", "MX") == 1
        clock.now += 2
        route(resolver, "ttl.test")
        assert server.count("ttl.test", "MX") == 2
    finally:
        cache.close()


def test_negative_answer_cached_for_soa_minimum(server, cache_path, clock):
    cache = MXCache(cache_path, min_ttl_s=0, negative_ttl_s=30, clock=clock)
    try:
        resolver = make_resolver(server, cache)
        for domain in ("missing.test", "bare.test"):  # NXDOMAIN, then no data
            route(resolver, domain)
            clock.now += SOA_MINIMUM_S - 1
            route(resolver, domain)
            assert server.count(domain, "MX") == 1
            clock.now += 2
            route(resolver, domain)
            assert server.count(domain, "MX") == 2
    finally:
        cache.close()


def test_negative_answer_without_soa_uses_default(server, cache_path, clock):
    cache = MXCache(cache_path, min_ttl_s=0, negative_ttl_s=30, clock=clock)
    try:
        resolver = make_resolver(server, cache)
        assert_outcome(route(resolver, "missing.nosoa"), Status.FAILED, "5.1.2")
        clock.now += 29
        route(resolver, "missing.nosoa")
        assert server.count("missing.nosoa", "MX") == 1
        clock.now += 2
        route(resolver, "missing.nosoa")
        assert server.count("missing.nosoa", "MX") == 2
    finally:
        cache.close()


def test_servfail_cached_briefly(server, cache, clock):
    server.fail("ordered.test", "MX")
    resolver = make_resolver(server, cache)
    assert_outcome(route(resolver, "ordered.test"), Status.DEFERRED, "4.4.3")
    server.heal()
    assert_outcome(route(resolver, "ordered.test"), Status.DEFERRED, "4.4.3")
    assert server.count("ordered.test", "MX") == 1
    clock.now += SERVFAIL_TTL_S + 1
    assert route(resolver, "ordered.test").hosts == [A_HOST, B_HOST, C_HOST]


def test_cache_clamps_and_survives_clock_steps(cache_path, clock):
    cache = MXCache(cache_path, min_ttl_s=60, max_ttl_s=3600, clock=clock)
    try:
        answer = CachedAnswer("ok", [(10, "mx.example")])
        cache.put("huge.example", "MX", answer, 10**6)
        assert cache.get("huge.example", "MX") == answer
        clock.now += 3601
        assert cache.get("huge.example", "MX") is None

        # A row written before the clock stepped back an hour would outlive
        # its TTL; it is taken as expired instead.
        cache.put("stepped.example", "MX", answer, 3600)
        clock.now -= 3600
        assert cache.get("stepped.example", "MX") is None
    finally:
        cache.close()


def test_unusable_cache_file_only_costs_queries(server, cache_path):
    Path(cache_path).parent.mkdir(parents=True)
    Path(cache_path).write_bytes(b"this is not an SQLite database" * 100)
    cache = MXCache(cache_path)
    try:
        resolver = make_resolver(server, cache)
        assert route(resolver, "ordered.test").hosts == [A_HOST, B_HOST, C_HOST]
        assert resolver.stats["cache_errors"] > 0
    finally:
        cache.close()


def test_concurrent_lookups_coalesce(server, cache):
    resolver = make_resolver(server, cache)

    async def twenty_sessions() -> list[Route]:
        sessions = (resolver.route("ordered.test") for _ in range(20))
        return await asyncio.gather(*sessions)

    routes = asyncio.run(twenty_sessions())
    assert all(result.hosts == [A_HOST, B_HOST, C_HOST] for result in routes)
    assert server.count("ordered.test", "MX") == 1
    assert server.count("mx-a.test", "A") == 1
    stats = resolver.stats
    assert stats["queries"] == 7
    assert stats["coalesced"] == 19 * 7
    assert stats["hits"] == 0


def test_runs_on_uvloop(server, cache):
    # The workers run uvloop; dnspython's asyncio backend must work on it.
    resolver = make_resolver(server, cache)
    result = uvloop.run(resolver.route("dual.test"))
    assert result.hosts == [MXHost("dual-mx.test", 10, ("2001:db8::10", "192.0.2.10"))]
