"""`precheck-server`: serve the API, and operate and audit a storage folder.

Exit codes: 0 done, 1 failed (one line on stderr says why), 2 usage.

Each command is an `async def` run by `main()` with one `asyncio.run`. Every failure meant for the
operator is an `OpsError` (or a config or domain error), caught in `main()` alone and printed as
`precheck-server: <message>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from precheck import __version__
from precheck.config import Config, ConfigError, load_config
from precheck.domain.status import ENDED, STATUSES, RunStatus
from precheck.errors import PrecheckError
from precheck.ops.errors import OpsError, UsageError
from precheck.storage.files import StorageRefused

log = logging.getLogger("precheck.server")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Runner = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
# What the operator sees as one line: ours, a bad config file, a command the log refuses, a
# storage folder the server will not start on.
CLI_ERRORS = (OpsError, ConfigError, PrecheckError, StorageRefused)


# Parsing -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors: one line, exit 2
        command = self.prog.removeprefix("precheck-server").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see --help)")


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=Path("config.toml"),
        help="config file (default: %(default)s)",
    )


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _days(text: str) -> float:
    """An `--older-than` value: a finite number of days, at least 0."""
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 <= days < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of days, at least 0: {text!r}")
    return days


def _command(
    group: Any, name: str, run: Runner, help: str, *, json_out: bool = False
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = group.add_parser(name, help=help, description=help)
    _config_option(p)
    if json_out:
        _json_option(p)
    p.set_defaults(handler=run)
    return p


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="precheck-server",
        description="Precheck: the service in front of the gf180mcu precheck image.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    serve = _command(commands, "serve", _serve, "run the HTTP API server")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log lines as text or JSON"
    )

    _command(commands, "status", _status, "show the server, queue and Docker state", json_out=True)

    cleanup = _command(
        commands, "cleanup", _cleanup, "list and remove labelled containers no live run owns"
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only list them")

    recheck = _command(
        commands,
        "recheck",
        _recheck,
        "re-check uploads on the image the engines have now",
        json_out=True,
    )
    recheck.add_argument(
        "--scan",
        action="store_true",
        required=True,
        help="resolve the configured image on each engine and queue the re-checks owed",
    )

    runs = commands.add_parser("runs", help="list, inspect, delete and prune runs").add_subparsers(
        dest="runs_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    lst = _command(runs, "list", _runs_list, "list runs, newest first", json_out=True)
    lst.add_argument(
        "--status",
        action="append",
        choices=[str(s) for s in RunStatus],
        help="only runs with this status (repeatable)",
    )
    _command(runs, "inspect", _runs_inspect, "show one run's document").add_argument("id")
    delete = _command(runs, "delete", _runs_delete, "delete an ended run with its files and log")
    delete.add_argument("id")
    delete.add_argument("--force", action="store_true", help="do not ask for confirmation")
    delete.add_argument(
        "--reason", default="deleted by an operator", help="recorded with the event"
    )
    prune = _command(runs, "prune", _runs_prune, "delete ended runs in bulk", json_out=True)
    prune.add_argument(
        "--status",
        action="append",
        choices=sorted(ENDED),
        help="completed, failed or cancelled (repeatable; default all three)",
    )
    prune.add_argument(
        "--older-than", type=_days, metavar="DAYS", help="only runs that ended more than DAYS ago"
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would go")
    prune.add_argument("--force", action="store_true", help="do not ask for confirmation")
    prune.add_argument("--reason", default="pruned by an operator", help="recorded with the events")

    retention = _command(
        commands,
        "prune",
        _prune,
        "remove the final runs' files that [retention] says are due (the event log stays)",
        json_out=True,
    )
    retention.add_argument(
        "--retention", action="store_true", help="by the [retention] policy (what it prunes)"
    )
    retention.add_argument("--dry-run", action="store_true", help="only print what would go")

    uploads = commands.add_parser("uploads", help="list uploads").add_subparsers(
        dest="uploads_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    _command(uploads, "list", _uploads_list, "list uploads, newest first", json_out=True)

    apikey = commands.add_parser("apikey", help="make API keys").add_subparsers(
        dest="apikey_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    gen = apikey.add_parser("generate", help="print a new key once, with its config lines")
    gen.add_argument(
        "--name", default="", help="the key's name, recorded as the actor of its requests"
    )
    gen.add_argument(
        "--role",
        choices=("user", "admin"),
        default="admin",
        help="user: reaches only what it made; admin: everything (default: %(default)s)",
    )
    # With a server running on the config's storage, the key is issued through it (at once, no
    # restart); otherwise the config lines are printed.
    _config_option(gen)
    gen.set_defaults(handler=_apikey_generate)

    events = _command(commands, "events", _events, "print the event log (audit)", json_out=True)
    events.add_argument("--after", type=int, default=0, metavar="N", help="start after position N")
    events.add_argument("--stream", help="only this stream (upload-<id>, run-<id>, server)")
    events.add_argument(
        "--type", action="append", help="only this type, or a prefix ending in '.' (repeatable)"
    )
    events.add_argument("--run", help="only this run's events")
    events.add_argument(
        "--follow", action="store_true", help="keep printing new events (needs a running server)"
    )

    verify = _command(
        commands,
        "verify",
        _verify,
        "check the hash chain and that a replay gives the live state",
        json_out=True,
    )
    verify.add_argument(
        "--anchor",
        metavar="POS:HASH",
        help="also prove the log still holds this event (from GET /api/v1/events/head)",
    )

    backup = _command(
        commands,
        "backup",
        _backup,
        "copy the event log, output lines and the files they name into DEST, while serving",
    )
    backup.add_argument("dest", metavar="DEST", help="the backup folder (made if needed)")

    replay = _command(
        commands,
        "replay",
        _replay,
        "show every upload and run as they were at a position",
        json_out=True,
    )
    replay.add_argument(
        "--until", type=int, required=True, metavar="POSITION", help="last event to apply"
    )
    return parser


def _load(args: argparse.Namespace, *, expand_secrets: bool = False) -> Config:
    # Only serving checks API keys: other commands don't need their `${ENV}` values set.
    return load_config(args.config, expand_secrets=expand_secrets)


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _confirm(question: str, force: bool) -> None:
    if force:
        return
    if not sys.stdin.isatty():
        raise OpsError(f"{question} Refusing without a terminal to ask on; pass --force")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise OpsError("cancelled")


# Serving -------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from precheck.app import create_app
    from precheck.ops.lock import StorageBusy, StorageLock
    from precheck.service.diagnostics import setup_logging
    from precheck.web.access_log import AccessLogger
    from precheck.web.same_site import is_loopback
    from precheck.web.serving import runner_options

    config = _load(args, expand_secrets=True)
    setup_logging(args.log_format)
    os.umask(0o077)  # layouts, outputs, the log and the admin token: the operator's alone
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    try:
        lock = await asyncio.to_thread(StorageLock, config.server.storage_path, 10)
    except StorageBusy as e:
        raise StorageBusy(f"{e}: is another server running on it?") from None
    try:
        local = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
        info = lock.announce(f"http://{local}:{port}")
        runner = web.AppRunner(
            create_app(config, admin_token=info.token),
            access_log_class=AccessLogger,
            shutdown_timeout=15,
            handle_signals=False,
            **runner_options(config),
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host or None, port).start()
            log.info("listening on http://%s:%d (the page at /, the API description at /docs)",
                     local, port)  # fmt: skip
            if not config.auth.required and not is_loopback(host or "0.0.0.0"):
                log.warning(
                    "auth is off and the server listens on %s, beyond this machine: anyone who"
                    " reaches it can upload, run and delete; set [auth] required = true",
                    host or "every address",
                )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        lock.close()
    return EXIT_OK


# Reading -------------------------------------------------------------------------------------


async def _state(config: Config, until: int | None = None) -> Any:
    from precheck.ops.writes import read_state

    return await read_state(config, until)


async def _status(args: argparse.Namespace) -> int:
    from precheck.ops.lock import running_server
    from precheck.ops.strays import docker_summary

    config = _load(args)
    server = running_server(config.server.storage_path)
    state, head = await _state(config)
    counts = {s: 0 for s in sorted(STATUSES)}
    for r in state.runs.by_id.values():
        counts[r.status] += 1
    docker = await docker_summary(config, state.instance_id)
    report = {
        "server": {
            "running": server is not None,
            "url": server.url if server else None,
            "pid": server.pid if server else None,
        },
        "storage_path": str(config.server.storage_path),
        "events": head,
        "uploads": len(state.uploads.by_id),
        "runs": counts,
        "queue": {
            "queued": state.queue.length,
            "running": len(state.queue.running),
            "max_concurrent": config.max_concurrent,
        },
        "docker": docker,
    }
    if args.json:
        _print_json(report)
        return EXIT_OK
    where = f"running at {server.url} (pid {server.pid})" if server else "not running"
    print(f"Server:         {where}")
    print(f"Storage:        {report['storage_path']} ({head} events, {report['uploads']} uploads)")
    queue = report["queue"]
    print(
        f"Queue:          {queue['queued']} queued, {queue['running']} running"
        f" of {queue['max_concurrent']}"
    )
    print("Runs:           " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    up = sum(1 for e in docker["engines"] if e["reachable"])
    state_of = "reachable" if docker["reachable"] else f"{up} of {len(docker['engines'])} reachable"
    print(
        f"Docker:         {state_of}, image {config.docker.image};"
        f" {docker['containers']} container(s) of this server"
    )
    for e in docker["engines"]:  # one line per engine
        label = f"  {e['name']}:"
        if e["reachable"]:
            print(f"{label:<16}reachable, {e['containers']} container(s), {e['slots']} slot(s)")
        else:
            print(f"{label:<16}unreachable: {e['error']}")
    return EXIT_OK


RUN_COLUMNS = ["id", "status", "queue", "step", "top cell", "created", "why it failed"]


def _run_rows(runs: list[Any], state: Any) -> list[list[str]]:
    from precheck.events.codec import iso

    rows = []
    for r in runs:
        pos = state.queue.position(r.id)
        progress = f"{r.progress.step}/{r.progress.total}" if r.progress else ""
        why = ""
        if r.status == RunStatus.FAILED:
            kind = r.result.classification if r.result and r.result.classification else "system"
            why = _clip(f"{kind}: {r.error}", 70)
        created = iso(r.created)[:19] + "Z"
        rows.append([r.id, r.status, str(pos or ""), progress, r.top_cell, created, why])
    return rows


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _documents(runs: list[Any], state: Any, config: Config) -> list[dict[str, Any]]:
    from precheck.web.render import run_document

    return [run_document(r, state, config) for r in runs]


async def _runs_list(args: argparse.Namespace) -> int:
    config = _load(args)
    wanted = set(args.status or [])
    if wanted - STATUSES:
        raise OpsError(
            f"unknown status {sorted(wanted - STATUSES)[0]!r}; use {', '.join(sorted(STATUSES))}"
        )
    state, _ = await _state(config)
    runs = [r for r in reversed(state.runs.by_id.values()) if not wanted or r.status in wanted]
    if args.json:
        _print_json(_documents(runs, state, config))
    else:
        _table(_run_rows(runs, state), RUN_COLUMNS)
    return EXIT_OK


async def _runs_inspect(args: argparse.Namespace) -> int:
    config = _load(args)
    state, _ = await _state(config)
    run = state.runs.get(args.id)
    if run is None:
        raise OpsError(f"No such precheck: {args.id}")
    _print_json(_documents([run], state, config)[0])
    return EXIT_OK


async def _uploads_list(args: argparse.Namespace) -> int:
    from precheck.clock import utcnow
    from precheck.events.codec import iso
    from precheck.web.render import upload_document

    config = _load(args)
    state, _ = await _state(config)
    uploads = sorted(state.uploads.by_id.values(), key=lambda u: u.created, reverse=True)
    now = utcnow()
    if args.json:
        _print_json([upload_document(u, now, state, config.docker.image) for u in uploads])
        return EXIT_OK
    rows = [
        [
            u.id,
            u.name,
            str(u.size),
            u.format,
            "expired" if u.status == "expired" or u.expires_at <= now else "available",
            str(len(u.run_ids)),
            iso(u.expires_at)[:19] + "Z",
        ]
        for u in uploads
    ]
    _table(rows, ["id", "name", "size", "format", "state", "runs", "expires"])
    return EXIT_OK


# Changing ------------------------------------------------------------------------------------


async def _runs_delete(args: argparse.Namespace) -> int:
    from precheck.ops.writes import delete_run

    config = _load(args)
    _confirm(f"Delete run {args.id} with its files and log?", args.force)
    await delete_run(config, args.id, args.reason)
    print(f"Deleted run {args.id}")
    return EXIT_OK


async def _runs_prune(args: argparse.Namespace) -> int:
    from precheck.ops.writes import prune_runs

    config = _load(args)
    statuses = args.status or sorted(ENDED)
    chosen = await prune_runs(config, statuses, args.older_than, True, args.reason)
    if not chosen:
        _print_json([]) if args.json else print("No runs to prune")
        return EXIT_OK
    if args.dry_run:
        _print_json(chosen) if args.json else print("\n".join(["Would delete:", *chosen]))
        return EXIT_OK
    _confirm(f"Delete {len(chosen)} run(s) with their files and logs?", args.force)
    deleted = await prune_runs(config, statuses, args.older_than, False, args.reason)
    if args.json:
        _print_json(deleted)
    else:
        print(f"Deleted {len(deleted)} run(s)")
    return EXIT_OK


async def _prune(args: argparse.Namespace) -> int:
    from precheck.ops.writes import prune_retention

    if not args.retention:
        raise UsageError(
            "prune: say what to prune: --retention (runs go with `runs prune`) (see --help)"
        )
    config = _load(args)
    if not config.retention.enabled and not args.json:
        print("Retention is off ([retention] keeps every file)")
    removals = await prune_retention(config, args.dry_run)
    if args.json:
        _print_json(removals)
        return EXIT_OK
    if not removals:
        print("Nothing is due")
        return EXIT_OK
    rows = [[r["Id"], ", ".join(r["What"]), r["Reason"], str(r["Bytes"])] for r in removals]
    print("Would remove:" if args.dry_run else f"Removed the files of {len(rows)} run(s):")
    _table(rows, ["run", "what", "reason", "bytes"])
    return EXIT_OK


async def _cleanup(args: argparse.Namespace) -> int:
    from precheck.ops.strays import cleanup

    config = _load(args)
    strays = await cleanup(config, dry_run=args.dry_run)
    if not strays:
        print("No stray containers found")
        return EXIT_OK
    print(f"Found {len(strays)} stray container(s):")
    for c in strays:
        print(f"  {c['Name']:<48} {c['Id'][:12]}  {c['Status']:<8}  run {c['Run']}")
    if args.dry_run:
        print("Dry run: nothing removed")
        return EXIT_OK
    print(f"Removed {len(strays)} container(s)")
    return EXIT_OK


async def _recheck(args: argparse.Namespace) -> int:
    from precheck.ops.rechecks import scan

    found = await scan(_load(args))
    if args.json:
        _print_json(found)
        return EXIT_OK
    for e in found["Engines"]:
        print(f"engine {e['Name']}: {e['Ref'] or e['Error']}")
    if found["Ref"] is None:
        print(f"No engine has {found['Image']}: nothing to re-check")
        return EXIT_FAILED
    planned = found["Planned"]
    print(f"{len(planned)} re-check(s) queued for {found['Ref']}")
    for p in planned:
        print(f"  upload {p['Upload']}: run {p['Run']} re-checks {p['Of']}")
    return EXIT_OK


async def _apikey_generate(args: argparse.Namespace) -> int:
    from precheck.ops.lock import running_server
    from precheck.ops.writes import issue_key
    from precheck.web.auth import key_digest

    name = args.name or "unnamed"
    server = running_server(_load(args).server.storage_path) if args.config.exists() else None
    if server is not None:
        doc = await issue_key(server, name, args.role)
        print(f"API key for {name!r} ({args.role}), issued by the running server and valid now")
        print(f"(shown once; store it now):\n\n  {doc['Key']}\n")
        print(f"Revoke it with DELETE /api/v1/keys/{name} (an admin key).")
        return EXIT_OK
    key = f"ws_key_{secrets.token_urlsafe(32)}"
    print(f"API key for {name!r} (shown once; store it now):\n\n  {key}\n")
    print("Add to config.toml, either with the digest (the file then holds no secret):\n")
    role = f'\n  role = "{args.role}"'
    print(f'  [[auth.api_keys]]\n  name = "{name}"\n  key_sha256 = "{key_digest(key)}"{role}\n')
    print("or from the environment:\n")
    print(f'  [[auth.api_keys]]\n  name = "{name}"\n  key = "${{PRECHECK_API_KEY}}"{role}')
    return EXIT_OK


# Auditing ------------------------------------------------------------------------------------


async def _events(args: argparse.Namespace) -> int:
    from precheck.ops.audit import print_events

    config = _load(args)
    return await print_events(
        config, args.after, args.stream, args.type or [], args.run, args.follow, args.json
    )


async def _verify(args: argparse.Namespace) -> int:
    from precheck.ops.audit import verify

    config = _load(args)
    anchor = None
    if args.anchor:
        pos, sep, digest = args.anchor.partition(":")
        if not (sep and pos.isdigit() and int(pos) > 0 and digest):
            raise UsageError(f"verify: --anchor takes POS:HASH, not {args.anchor!r} (see --help)")
        anchor = (int(pos), digest)
    report = await verify(config, anchor)
    if args.json:
        _print_json(report.as_json())
    else:
        for line in report.lines:
            print(line)
    if not report.ok:
        raise OpsError(f"verify failed: {report.problem}")
    return EXIT_OK


async def _backup(args: argparse.Namespace) -> int:
    from precheck.ops.backup import backup

    config = _load(args)
    report = await backup(config, Path(args.dest))
    for line in report.lines():
        print(line)
    return EXIT_OK


async def _replay(args: argparse.Namespace) -> int:
    from precheck.clock import utcnow
    from precheck.web.render import upload_document

    config = _load(args)
    if args.until < 0:
        raise OpsError("--until must be a position of at least 0")
    state, head = await _state(config, args.until)
    if args.until > head:
        raise OpsError(f"--until {args.until} is past the end of the log ({head})")
    runs = list(state.runs.by_id.values())
    at = max((r.position for r in runs), default=0)
    if args.json:
        now = utcnow()
        _print_json(
            {
                "position": min(args.until, head),
                "uploads": [
                    upload_document(u, now, state, config.docker.image)
                    for u in state.uploads.by_id.values()
                ],
                "runs": _documents(runs, state, config),
            }
        )
        return EXIT_OK
    print(f"State after event {min(args.until, head)} of {head} (last run change at {at}):\n")
    print(f"Uploads ({len(state.uploads.by_id)}):")
    _table(
        [
            [u.id, u.name, str(u.size), u.status, str(len(u.run_ids))]
            for u in state.uploads.by_id.values()
        ],
        ["id", "name", "size", "state", "runs"],
    )
    print(f"\nRuns ({len(runs)}):")
    _table(_run_rows(runs, state), RUN_COLUMNS)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `precheck-server` and `python -m precheck`."""
    try:
        args = _parser().parse_args(argv)
        code: int = asyncio.run(args.handler(args))
    except CLI_ERRORS as e:
        sys.stdout.flush()  # what was printed before the failure comes first
        print(f"precheck-server: {e}", file=sys.stderr)
        return e.exit_code if isinstance(e, OpsError) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:  # `... | head`
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
