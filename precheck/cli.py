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

    config = _load(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web.run_app(
        create_app(config),
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
        access_log_format='%a "%r" %s %b %Tfs',
    )
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
