"""`precheck-server`: serve the API and manage the service from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from precheck import __version__
from precheck.config import Config, ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandFailed(Exception):
    """A command could not do its work; the message is printed as one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="precheck-server", description="Precheck service for gf180mcu layouts."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP API server")
    _config_option(serve)
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.set_defaults(run=_serve)

    cleanup = commands.add_parser(
        "cleanup", help="list and remove containers labelled as this server's that no live run owns"
    )
    _config_option(cleanup)
    cleanup.add_argument("--dry-run", action="store_true", help="only list them")
    cleanup.set_defaults(run=_cleanup)
    return parser


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=Path("config.toml"), help="config file (default: %(default)s)"
    )


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as e:
        raise CommandFailed(str(e)) from None


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from precheck.app import create_app
    from precheck.web.access_log import AccessLogger

    config = _load(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web.run_app(
        create_app(config),
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
        access_log_class=AccessLogger,
    )
    return EXIT_OK


def _cleanup(args: argparse.Namespace) -> int:
    import asyncio

    from precheck.strays import StrayError, find_strays, remove_strays

    config = _load(args)
    try:
        strays = asyncio.run(find_strays(config))
    except StrayError as e:
        raise CommandFailed(str(e)) from None
    if not strays:
        print("No stray containers found")
        return EXIT_OK
    print(f"Found {len(strays)} stray container(s):")
    for c in strays:
        print(f"  {c.name:<48} {c.id[:12]}  {c.status:<8}  run {c.labels.get('precheck.run', '?')}")
    if args.dry_run:
        print("Dry run: nothing removed")
        return EXIT_OK
    try:
        removed = asyncio.run(remove_strays(config, strays))
    except StrayError as e:
        raise CommandFailed(str(e)) from None
    print(f"Removed {removed} container(s)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `precheck-server` and `python -m precheck`."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CommandFailed as e:
        print(f"precheck-server: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
