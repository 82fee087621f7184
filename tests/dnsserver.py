"""A small authoritative DNS server on loopback, for tests.

It speaks real DNS over UDP and TCP on one port, so the code under test
uses its ordinary resolver, in this process or in another one (a mailfast
server started by an end-to-end test only needs the address and port)::

    with ZoneServer({
        "example.com": {
            "MX": ["10 mx1.example.com", "20 mx2.example.com"],
            "SOA": "ns.example.com hostmaster.example.com 1 3600 600 86400 300",
        },
        "mx1.example.com": {"A": "192.0.2.1", "AAAA": (30, ["2001:db8::1"])},
        "mx2.example.com": {"CNAME": "mx1.example.com"},
    }) as server:
        resolver_config = [server.nameserver]   # ("127.0.0.1", port)
        ...
        assert server.count("example.com", "MX") == 1

Records map an owner name to ``{rdtype: value}`` where value is one rdata
in zone-file syntax, a list of them, or ``(ttl, rdata or list)``; names in
rdata are absolute whether or not they end with a dot. ``ZoneServer.from_zone``
loads zone-file text instead. Answers follow what an authoritative server
does:

- CNAME chains inside the data are followed and every CNAME goes in the
  answer section (RFC 1034 §4.3.2); the rcode is that of the last name
  (RFC 6604).
- A name with no data of the asked type is NOERROR/no data; a name that
  neither has records nor has names below it is NXDOMAIN. Negative answers
  carry the SOA of the closest enclosing name that has one, if any, so
  resolvers can apply RFC 2308 negative caching.
- ``fail(name)`` makes a name answer SERVFAIL, ``drop(name)`` makes it never
  answer (the client times out); both optionally for one rdtype only.
- A UDP answer larger than the client's buffer (512 octets, or its EDNS
  size) is sent truncated with TC set, so the client retries over TCP.

Every query received is counted per (name, rdtype), names in lower case
without the final dot; a TCP retry after truncation counts again. All
methods are thread-safe and the data can be changed while the server runs.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import selectors
import socket
import struct
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

DEFAULT_TTL_S = 3600
MAX_CNAME_CHAIN = 16
UDP_DEFAULT_PAYLOAD_OCTETS = 512  # RFC 1035 §4.2.1, when the query has no EDNS
MAX_MESSAGE_OCTETS = 65535
BIND_ATTEMPTS = 20  # to find a port free for both UDP and TCP


class ZoneServer:
    """An authoritative DNS server for test zones, run in a background thread.

    ``host`` is any loopback address (``127.0.0.1``, ``127.0.0.53``,
    ``::1``); ``port`` 0 picks a port free for both UDP and TCP. Use it as a
    context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        records: dict | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port = 0
        self._lock = threading.Lock()
        self._rrsets: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        self._failing: set[tuple[str, str | None]] = set()
        self._dropped: set[tuple[str, str | None]] = set()
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._thread: threading.Thread | None = None
        self._sockets: list[socket.socket] = []
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._stopping = False
        self.errors: list[Exception] = []  # exceptions raised while answering
        if records:
            self.load(records)

    @classmethod
    def from_zone(cls, text: str, origin: str, **kwargs) -> ZoneServer:
        """A server for a zone given as zone-file text (SOA and NS optional)."""
        server = cls(**kwargs)
        server.load_zone(text, origin)
        return server

    # Data.

    def load(self, records: dict) -> None:
        """Add or replace rrsets: ``{name: {rdtype: value}}`` as described above."""
        for name, rrsets in records.items():
            for rdtype, value in rrsets.items():
                self.set(name, rdtype, value)

    def load_zone(self, text: str, origin: str) -> None:
        """Add or replace every rrset of a zone given as zone-file text."""
        zone = dns.zone.from_text(text, origin, relativize=False, check_origin=False)
        with self._lock:
            for name, rdataset in zone.iterate_rdatasets():
                rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
                rrset.update(rdataset)
                self._rrsets.setdefault(name, {})[rdataset.rdtype] = rrset

    def set(self, name: str, rdtype: str, value) -> None:
        """Replace one rrset; ``value`` as in the records dict."""
        ttl = DEFAULT_TTL_S
        if isinstance(value, tuple):
            ttl, value = value
        if isinstance(value, str):
            value = [value]
        owner = dns.name.from_text(name)
        rdtype_value = dns.rdatatype.from_text(rdtype)
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rdtype_value)
        for text in value:
            rdata = dns.rdata.from_text(
                dns.rdataclass.IN,
                rdtype_value,
                text,
                origin=dns.name.root,
                relativize=False,
            )
            rrset.add(rdata, ttl)
        with self._lock:
            self._rrsets.setdefault(owner, {})[rdtype_value] = rrset

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Delete one rrset, or every rrset of ``name``."""
        owner = dns.name.from_text(name)
        with self._lock:
            if rdtype is None:
                self._rrsets.pop(owner, None)
            else:
                node = self._rrsets.get(owner, {})
                node.pop(dns.rdatatype.from_text(rdtype), None)
                if not node:
                    self._rrsets.pop(owner, None)

    # Faults.

    def fail(self, name: str, rdtype: str | None = None) -> None:
        """Answer SERVFAIL for ``name`` (all types, or ``rdtype`` only)."""
        with self._lock:
            self._failing.add((_key(name), rdtype and rdtype.upper()))

    def drop(self, name: str, rdtype: str | None = None) -> None:
        """Never answer queries for ``name`` (all types, or ``rdtype`` only)."""
        with self._lock:
            self._dropped.add((_key(name), rdtype and rdtype.upper()))

    def heal(self) -> None:
        """Forget every ``fail`` and ``drop``."""
        with self._lock:
            self._failing.clear()
            self._dropped.clear()

    # Counters.

    def count(self, name: str | None = None, rdtype: str | None = None) -> int:
        """Queries received for ``name`` and ``rdtype``; None matches any."""
        name_key = None if name is None else _key(name)
        rdtype_key = None if rdtype is None else rdtype.upper()
        with self._lock:
            return sum(
                number
                for (qname, qtype), number in self._counts.items()
                if name_key in (None, qname) and rdtype_key in (None, qtype)
            )

    def counts(self) -> dict[tuple[str, str], int]:
        """A copy of all counters, keyed by (name, rdtype)."""
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    # Life cycle.

    @property
    def port(self) -> int:
        return self._port

    @property
    def nameserver(self) -> tuple[str, int]:
        """(address, port) to give to a resolver."""
        return (self.host, self._port)

    def start(self) -> ZoneServer:
        if self._thread is not None:
            raise RuntimeError("already started")
        udp, tcp = self._bind()
        self._sockets = [udp, tcp]
        self._wakeup = socket.socketpair()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._serve, name=f"dns-{self.host}:{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every socket; the server can be started again."""
        if self._thread is None:
            return
        assert self._wakeup is not None
        self._stopping = True
        self._wakeup[1].send(b"x")
        self._thread.join()
        self._thread = None
        for sock in (*self._sockets, *self._wakeup):
            sock.close()
        self._sockets = []
        self._wakeup = None

    def __enter__(self) -> ZoneServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"{self.host} is not a loopback address")
        attempts = 1 if self._requested_port else BIND_ATTEMPTS
        for _ in range(attempts):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self._requested_port))
                port = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, port))
                tcp.listen(16)
            except OSError as error:
                udp.close()
                tcp.close()
                if error.errno != errno.EADDRINUSE or attempts == 1:
                    raise
                continue
            udp.setblocking(False)
            tcp.setblocking(False)
            self._port = port
            return udp, tcp
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")

    # The serving thread.

    def _serve(self) -> None:
        udp, tcp = self._sockets
        assert self._wakeup is not None
        buffers: dict[socket.socket, bytearray] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(udp, selectors.EVENT_READ)
            selector.register(tcp, selectors.EVENT_READ)
            selector.register(self._wakeup[0], selectors.EVENT_READ)
            try:
                while not self._stopping:
                    for key, _ in selector.select():
                        sock = key.fileobj
                        if sock is udp:
                            self._serve_datagram(udp)
                        elif sock is tcp:
                            self._accept(tcp, selector, buffers)
                        elif sock in buffers:
                            self._serve_stream(sock, selector, buffers)
            finally:
                for connection in buffers:
                    connection.close()

    def _serve_datagram(self, udp: socket.socket) -> None:
        try:
            wire, peer = udp.recvfrom(MAX_MESSAGE_OCTETS)
        except (BlockingIOError, ConnectionRefusedError):
            return
        reply = self._reply(wire, stream=False)
        if reply is not None:
            udp.sendto(reply, peer)

    def _accept(self, tcp, selector, buffers) -> None:
        try:
            connection, _ = tcp.accept()
        except BlockingIOError:
            return
        connection.setblocking(False)
        selector.register(connection, selectors.EVENT_READ)
        buffers[connection] = bytearray()

    def _serve_stream(self, connection, selector, buffers) -> None:
        # RFC 1035 §4.2.2: each message is preceded by its two-octet length.
        try:
            data = connection.recv(MAX_MESSAGE_OCTETS)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            selector.unregister(connection)
            del buffers[connection]
            connection.close()
            return
        buffer = buffers[connection]
        buffer += data
        while len(buffer) >= 2:
            (length,) = struct.unpack("!H", buffer[:2])
            if len(buffer) < 2 + length:
                break
            wire = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            reply = self._reply(wire, stream=True)
            if reply is not None:
                connection.setblocking(True)
                connection.sendall(struct.pack("!H", len(reply)) + reply)
                connection.setblocking(False)

    def _reply(self, wire: bytes, stream: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        try:
            response = self._respond(query)
        except Exception as error:
            # A bug in this server must show in the test, not kill the thread.
            self.errors.append(error)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        if response is None:
            return None
        if stream:
            max_size = MAX_MESSAGE_OCTETS
        elif query.edns >= 0:
            max_size = max(query.payload, UDP_DEFAULT_PAYLOAD_OCTETS)
        else:
            max_size = UDP_DEFAULT_PAYLOAD_OCTETS
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            # RFC 2181 §9: an answer that does not fit is sent with TC set
            # and without the records; the client asks again over TCP.
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | dns.flags.AA
            truncated.set_rcode(response.rcode())
            return truncated.to_wire(max_size=max_size)

    def _respond(self, query: dns.message.Message) -> dns.message.Message | None:
        response = dns.message.make_response(query)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname_key = _key(question.name.to_text())
        qtype_text = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self._counts[(qname_key, qtype_text)] += 1
            if _matches(self._dropped, qname_key, qtype_text):
                return None
            if _matches(self._failing, qname_key, qtype_text):
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            if question.rdclass != dns.rdataclass.IN:
                response.set_rcode(dns.rcode.REFUSED)
                return response
            response.flags |= dns.flags.AA
            self._fill(response, question.name, question.rdtype)
        return response

    def _fill(
        self, response: dns.message.Message, qname: dns.name.Name, rdtype: int
    ) -> None:
        # Called with the lock held.
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            node = self._rrsets.get(name, {})
            if rdtype in node:
                response.answer.append(node[rdtype])
                return
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.CNAME:
                break
            response.answer.append(cname)
            name = cname[0].target
        if not self._exists(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = self._closest_soa(name)
        if soa is not None:
            response.authority.append(soa)

    def _exists(self, name: dns.name.Name) -> bool:
        # RFC 8020: a name with names below it exists, even with no records.
        return any(owner.is_subdomain(name) for owner in self._rrsets)

    def _closest_soa(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        while True:
            soa = self._rrsets.get(name, {}).get(dns.rdatatype.SOA)
            if soa is not None:
                return soa
            try:
                name = name.parent()
            except dns.name.NoParent:
                return None


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def _matches(faults: set[tuple[str, str | None]], name: str, rdtype: str) -> bool:
    return (name, None) in faults or (name, rdtype) in faults
