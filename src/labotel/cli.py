"""The ``labotel`` command: ``labotel demo``, ``labotel alerts-webhook``, ``labotel config``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labotel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the LabEnd demo service")
    demo.add_argument("--address", default="127.0.0.1:8080", help="host:port to serve on")
    demo.add_argument("--database", default=None, help="SQLite file (default: a temp file)")
    demo.add_argument("--traffic", type=float, default=2.0,
                      help="orders per second the demo sends itself (0: none)")

    webhook = commands.add_parser("alerts-webhook",
                                  help="receive Alertmanager webhooks and print them")
    webhook.add_argument("--address", default="127.0.0.1:5001", help="host:port to serve on")

    config = commands.add_parser("config", help="print every option with its default")
    config.add_argument("--markdown", action="store_true", help="as the README's table")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from labotel.demo.app import run

        return run(args.address, args.database, args.traffic)
    if args.command == "alerts-webhook":
        from labotel.alerting.webhook import run as run_webhook

        return run_webhook(args.address)
    if args.command == "config":
        from labotel.config import describe, markdown_table

        if args.markdown:
            print(markdown_table())
            return 0
        for env, default, doc in describe():
            print(f"{env:40} {default:20} {doc}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
