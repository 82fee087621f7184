"""Accept-latency probe: connect, time until the 220 banner, QUIT, repeat.

Run as its own process beside the load so that its timings do not share an
interpreter lock with the harness:

    python bench/probe.py PORT INTERVAL_S

It probes until SIGTERM, then prints one JSON list of latencies in seconds
(a probe that fails or times out is recorded as null).
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time

PROBE_TIMEOUT_S = 10.0


def probe_once(port: int) -> float | None:
    started = time.perf_counter()
    try:
        with socket.create_connection(
            ("127.0.0.1", port), timeout=PROBE_TIMEOUT_S
        ) as sock:
            banner = b""
            while b"\n" not in banner:
                chunk = sock.recv(512)
                if not chunk:
                    return None
                banner += chunk
            elapsed = time.perf_counter() - started
            sock.sendall(b"QUIT\r\n")
            sock.recv(512)
    except OSError:
        return None
    return elapsed if banner.startswith(b"220") else None


def main() -> int:
    port, interval_s = int(sys.argv[1]), float(sys.argv[2])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    latencies: list[float | None] = []
    while not stopping:
        latencies.append(probe_once(port))
        time.sleep(interval_s)
    json.dump(latencies, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
