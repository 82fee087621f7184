"""The ``mailfast`` command: serve, or check a configuration."""

from __future__ import annotations

import argparse
import sys

from . import config as configuration
from . import logconfig

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailfast",
        description="A fast SMTP server. Without a command, serve.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration (default: embedded)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve mail (the default)")
    check = commands.add_parser(
        "check-config", help="validate the configuration and print it in full"
    )
    queue = commands.add_parser(
        "queue",
        help="list, show, flush or delete queued messages (works while serving)",
    )
    queue.add_argument(
        "action", nargs="?", default="list", choices=["list", "show", "flush", "delete"]
    )
    queue.add_argument("queue_ids", nargs="*", metavar="ID")
    user = commands.add_parser(
        "user", help="add or delete submission users, set a password, list users"
    )
    user.add_argument("action", choices=["add", "del", "passwd", "list"])
    user.add_argument(
        "name", nargs="?", metavar="NAME", help="the login (not for list)"
    )
    user.add_argument(
        "--address",
        dest="addresses",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="add: an extra envelope sender the user may use (repeatable)",
    )
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    for sub in (serve, check, queue, user):
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    for sub in (parser, serve):
        sub.add_argument(
            "--workers", type=int, metavar="N", help="worker processes (default: CPUs)"
        )
        sub.add_argument(
            "--log-level",
            choices=list(logconfig.LEVELS),
            help="override server.log_level",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = configuration.load(args.config)
    except configuration.ConfigError as exc:
        print(f"mailfast: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        for warning in configuration.warnings(config):
            print(f"mailfast: warning: {warning}", file=sys.stderr)
        sys.stdout.write(configuration.to_toml(config))
        return 0
    if args.command == "queue":
        from . import queuecmd
        from .mailqueue import MailQueue

        return queuecmd.run(
            MailQueue(config.queue.directory), args.action, args.queue_ids
        )
    if args.command == "user":
        from . import usercmd

        return usercmd.run(
            config.auth.users_file,
            args.action,
            args.name,
            args.addresses,
            args.password_stdin,
        )
    assert args.command in (None, "serve"), args.command
    if args.workers is not None and args.workers < 1:
        print("mailfast: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    logconfig.configure(args.log_level or config.server.log_level)

    from . import master  # imports nothing that starts an event loop

    return master.serve(config, args.config, args.workers)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
