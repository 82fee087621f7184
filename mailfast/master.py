"""The master process: binds the sockets, forks workers, keeps them alive.

Theory of operation
-------------------
The master never runs an event loop and never touches a client: it owns the
listening sockets (so they stay open while workers come and go, and no
connection is refused during a restart or reload), forks the workers, and
then only waits in ``select`` on two kinds of descriptor: a self-pipe that
the signal handlers write to (handlers only record the signal; the work is
done in the main loop), and one heartbeat pipe per worker.

* A worker that exits without being asked is replaced at once; when workers
  keep dying right after start, replacement slows down instead of spinning.
* A worker whose heartbeat stops (its loop is stuck) is killed and replaced.
* SIGHUP: read the configuration again; if it is valid, fork a new
  generation of workers with it, then send SIGTERM to the old generation,
  which stops accepting and drains. The sockets never close, so clients are
  served throughout.
* SIGTERM or SIGINT: SIGTERM to every worker, wait for them to drain (the
  grace period plus a margin), SIGKILL whatever is left, exit.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass

from . import config as configuration
from .config import Config, ConfigError
from . import privileges
from .connlimits import ConnectionTable, ConnectionTableFullError
from .mailqueue import MailQueue

log = logging.getLogger("mailfast.master")

EXIT_OK = 0
EXIT_CONFIG = 2  # the configuration cannot be used
EXIT_BIND = 3  # a listening address cannot be bound
EXIT_WORKER_CRASH = 4  # a worker died with an unexpected exception

LISTEN_BACKLOG = 1024
CRASH_WINDOW_S = 10.0  # restarts within this window count as a crash loop
CRASH_LIMIT = 5  # after this many, wait before the next restart
DRAIN_MARGIN_S = 5.0  # beyond the grace period, before SIGKILL
WORKER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@dataclass(slots=True)
class Worker:
    pid: int
    generation: int
    heartbeat_fd: int
    last_beat: float
    slot: int  # this worker's row in the shared connection table
    retiring: bool = False
    killed: bool = False


class Master:
    def __init__(self, config: Config, config_path: str | None, workers: int | None):
        self.config = config
        self.config_path = config_path
        self.workers_override = workers
        self.sockets: dict[str, socket.socket] = {}
        self.workers: dict[int, Worker] = {}
        self.generation = 0
        self.signals: list[int] = []
        self.recent_crashes: list[float] = []
        self.stopping = False
        # Connection counts shared by all workers, so limits hold server-wide.
        # Room for two generations side by side during a reload, and more
        # workers after one; 16,384 address buckets keep it at a few MiB.
        self.connection_table = ConnectionTable(
            slots=max(16, 4 * self.worker_count), buckets=16_384
        )

    @property
    def worker_count(self) -> int:
        return self.workers_override or self.config.worker_count

    def run(self) -> int:
        try:
            self._bind(self.config)
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            return EXIT_BIND
        privileges.warn_if_root(self.config)
        _log_warnings(self.config)
        queue = MailQueue(self.config.queue.directory)
        queue.create_directories()
        privileges.prepare_directories(self.config)  # after everything it must own
        recovered = queue.recover()  # no worker runs yet: every active file is orphaned
        if recovered:
            log.info("recovered %d queued messages from a previous run", recovered)
        wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wakeup_fds = (wakeup_read, wakeup_write)
        signal.set_wakeup_fd(wakeup_write)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._record_signal)
        log.info(
            "mailfast master %d listening on %s with %d workers",
            os.getpid(),
            ", ".join(self.sockets),
            self.worker_count,
        )
        self.generation = 1
        self._spawn_missing()
        while True:
            self._wait(wakeup_read)
            for signum in self._take_signals():
                self._handle(signum)
            self._reap()
            if self.stopping and not self.workers:
                break
            self._check_heartbeats()
            if not self.stopping:
                self._spawn_missing()
        log.info("mailfast master %d stopped", os.getpid())
        return EXIT_OK

    # Signals: the handler only records; the main loop acts.

    def _record_signal(self, signum: int, _frame) -> None:
        self.signals.append(signum)

    def _take_signals(self) -> list[int]:
        taken, self.signals = self.signals, []
        return taken

    def _handle(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop()
        elif signum == signal.SIGHUP:
            self._reload()

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + (
            self.config.server.shutdown_grace_s + DRAIN_MARGIN_S
        )
        log.info(
            "master %d stopping: draining %d workers", os.getpid(), len(self.workers)
        )
        # Our copies of the listening sockets would keep the kernel accepting
        # connections that nobody will greet; once the workers close theirs
        # too, new clients are refused and go to another MX.
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        for worker in self.workers.values():
            self._retire(worker)

    def _reload(self) -> None:
        try:
            new_config = configuration.load(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        try:
            self._bind(new_config)
        except OSError as exc:
            log.error("reload refused, cannot listen: %s", exc)
            return
        old = [worker for worker in self.workers.values() if not worker.retiring]
        self.config = new_config
        self.generation += 1
        log.info(
            "reloading: generation %d replaces %d workers", self.generation, len(old)
        )
        _log_warnings(new_config)
        self._spawn_missing()
        for worker in old:
            self._retire(worker)
        unused = set(self.sockets) - {address for address, _ in new_config.listeners}
        for address in unused:  # the retiring workers hold their own copies
            self.sockets.pop(address).close()

    # Workers.

    def _bind(self, config: Config) -> None:
        """Open the listening sockets ``config`` needs and we do not have yet."""
        for address, kind in config.listeners:
            if address in self.sockets:
                continue
            host, port = configuration.parse_listen(address, f"server.{kind}")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
                sock.listen(LISTEN_BACKLOG)
            except OSError as exc:
                sock.close()
                raise OSError(exc.errno, f"{address} ({kind}): {exc.strerror}") from exc
            sock.setblocking(False)
            self.sockets[address] = sock

    def _spawn_missing(self) -> None:
        current = [w for w in self.workers.values() if not w.retiring]
        missing = self.worker_count - len(current)
        if missing <= 0:
            return
        now = time.monotonic()
        self.recent_crashes = [
            t for t in self.recent_crashes if now - t < CRASH_WINDOW_S
        ]
        if len(self.recent_crashes) >= CRASH_LIMIT:
            return  # crash loop: the next heartbeat check tries again
        for _ in range(missing):
            try:
                self._spawn()
            except ConnectionTableFullError:
                log.error("no free connection slot for another worker; restart to grow")
                return

    def _spawn(self) -> None:
        slot = self.connection_table.allocate_slot()
        try:
            heartbeat_read, heartbeat_write = os.pipe2(os.O_CLOEXEC)
        except OSError:
            self.connection_table.free_slot(slot)
            raise
        os.set_blocking(heartbeat_read, False)
        os.set_blocking(heartbeat_write, False)
        sockets = [
            (kind, self.sockets[address]) for address, kind in self.config.listeners
        ]
        # Signals stay blocked across the fork until the worker's own handlers
        # are in place: a SIGTERM in between would otherwise run the master's
        # handler in the child, which only records it, and be lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
            self.connection_table.free_slot(slot)
            os.close(heartbeat_read)
            os.close(heartbeat_write)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
        if pid == 0:  # the child: never returns
            os.close(heartbeat_read)
            status = EXIT_WORKER_CRASH
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in self.wakeup_fds:
                    os.close(fd)
                for worker in self.workers.values():
                    os.close(worker.heartbeat_fd)
                from . import worker as worker_module

                status = worker_module.run(
                    self.config, sockets, heartbeat_write, self.connection_table, slot
                )
            except BaseException:
                log.exception("worker %d crashed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(status)
        os.close(heartbeat_write)
        self.workers[pid] = Worker(
            pid, self.generation, heartbeat_read, time.monotonic(), slot
        )

    def _retire(self, worker: Worker) -> None:
        worker.retiring = True
        try:
            os.kill(worker.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.heartbeat_fd)
            self.connection_table.free_slot(worker.slot)  # counts a kill -9 left
            reason = _describe_status(status)
            # Before any replacement starts: its messages are nobody's now.
            recovered = MailQueue(self.config.queue.directory).recover(pid)
            if recovered:
                log.info("worker %d left %d queued messages; requeued", pid, recovered)
            if worker.retiring:
                log.info("worker %d exited (%s)", pid, reason)
            else:
                log.error("worker %d died (%s); starting a replacement", pid, reason)
                self.recent_crashes.append(time.monotonic())

    def _wait(self, wakeup_fd: int) -> None:
        fds = [wakeup_fd, *(w.heartbeat_fd for w in self.workers.values())]
        try:
            ready, _, _ = select.select(fds, [], [], 1.0)
        except InterruptedError:
            return
        now = time.monotonic()
        by_fd = {w.heartbeat_fd: w for w in self.workers.values()}
        for fd in ready:
            try:
                while os.read(fd, 4096):  # the content does not matter, only arrival
                    pass
            except BlockingIOError:
                pass
            if fd in by_fd:
                by_fd[fd].last_beat = now

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if self.stopping and now > self.stop_deadline:
                if not worker.killed:
                    log.error("worker %d did not drain in time; killing it", worker.pid)
                    worker.killed = True
                    _kill(worker.pid)
            elif now - worker.last_beat > self.config.server.worker_timeout_s:
                log.error("worker %d stopped responding; killing it", worker.pid)
                worker.last_beat = now  # kill once; the reaper sees it go
                _kill(worker.pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _log_warnings(config: Config) -> None:
    for warning in configuration.warnings(config):
        log.warning("%s", warning)


def serve(config: Config, config_path: str | None, workers: int | None) -> int:
    return Master(config, config_path, workers).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run mailfast through its command line: mailfast --help")
