"""`precheck`: argument parsing, one function per command, and the exit codes.

Exit codes: 0 passed, 1 design failure, 3 system failure or cancelled, 4 server or connection
error, 2 usage. Commands that only show something (status, logs, list, cancel) exit 0 once done.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from precheck import __version__
from precheck.client import outcome
from precheck.client.api import Api, ApiError, with_retries
from precheck.client.download import Downloader
from precheck.client.estimate import estimate_words
from precheck.client.follow import End, Follower
from precheck.client.output import Output, size
from precheck.client.watch import Watcher

DEFAULT_SERVER = "http://127.0.0.1:8000"
SLOTS = ("1x1", "0p5x1", "1x0p5", "0p5x0p5")
STATUSES = ("queued", "running", "finishing", "completed", "failed", "cancelled")
_DIE_ID = re.compile(r"[A-Za-z0-9]{8}")


class UsageError(Exception):
    """A command line that cannot be carried out as given (exit 2)."""


def _die_id(value: str) -> str:
    if not _DIE_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not 8 letters or digits")
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return seconds


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of lines")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; common options are taken before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        help=f"the server's URL (env PRECHECK_URL; default {DEFAULT_SERVER})",
    )
    common.add_argument(
        "--key",
        default=argparse.SUPPRESS,
        help="API key, sent as a Bearer token (env PRECHECK_API_KEY)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable output: one JSON document, or JSON lines while following",
    )
    common.add_argument(
        "--use-env-proxy",
        action="store_true",
        default=argparse.SUPPRESS,
        help="use HTTP(S)_PROXY / NO_PROXY from the environment (env PRECHECK_USE_ENV_PROXY=1)",
    )
    common.add_argument(
        "--give-up-after",
        type=_seconds,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="while following or downloading, retry for this long without the server (300)",
    )
    parser = argparse.ArgumentParser(
        prog="precheck",
        parents=[common],
        description="Submit layouts to a precheck server, follow runs, fetch their results.",
        epilog="exit codes: 0 passed, 1 design failure, 2 usage, 3 system failure or "
        "cancelled, 4 server or connection error",
    )
    parser.add_argument("--version", action="version", version=f"precheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = sub.add_parser(
        "submit", parents=[common], help="upload a layout, run it, follow it, fetch the results"
    )
    submit.add_argument("layout", type=Path, metavar="LAYOUT", help="GDS, GDS.gz or OASIS file")
    submit.add_argument("--top", required=True, help="the top cell")
    submit.add_argument("--id", type=_die_id, dest="die_id", help="die id: 8 letters or digits")
    submit.add_argument("--slot", choices=SLOTS, help="the slot size (the server's default)")
    submit.add_argument("--cob", action="store_true", help="add the chip-on-board pad check")
    submit.add_argument(
        "--output-format",
        choices=("gds", "oas"),
        help="the final layout's format: oas is OASIS, smaller (the server's default)",
    )
    submit.add_argument(
        "--no-cache",
        action="store_true",
        help="run it even when an identical run ended before (else answered from that run)",
    )
    submit.add_argument("--out", type=Path, metavar="DIR", help="default ./precheck-<run id>/")
    submit.add_argument(
        "--no-follow", action="store_true", help="print the run id once it is queued, and exit 0"
    )
    submit.add_argument(
        "--notify-webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST a signed note to URL when the run ends (again for more)",
    )
    submit.add_argument(
        "--notify-email",
        action="append",
        default=[],
        metavar="ADDR",
        help="mail ADDR when the run ends (again for more)",
    )

    status = sub.add_parser("status", parents=[common], help="show a run")
    status.add_argument("run", metavar="RUN")

    logs = sub.add_parser("logs", parents=[common], help="print a run's log")
    logs.add_argument("run", metavar="RUN")
    logs.add_argument("-f", "--follow", action="store_true", help="follow it until it ends")
    logs.add_argument("--tail", type=_count, metavar="N", help="only the last N lines")

    wait = sub.add_parser(
        "wait", parents=[common], help="wait for a run's end; exit as its verdict"
    )
    wait.add_argument("run", metavar="RUN")

    download = sub.add_parser(
        "download", parents=[common], help="fetch a final run's files; exit as its verdict"
    )
    download.add_argument("run", metavar="RUN")
    download.add_argument("--out", type=Path, metavar="DIR", help="default ./precheck-<run id>/")

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a queued or running run")
    cancel.add_argument("run", metavar="RUN")

    listing = sub.add_parser("list", parents=[common], help="list runs, newest first")
    listing.add_argument(
        "--status", action="append", choices=STATUSES, default=[], help="only these (repeatable)"
    )
    return parser


class Context:
    """What every command gets: the API, the output, and the options they share."""

    def __init__(self, args: argparse.Namespace, api: Api, out: Output) -> None:
        self.args, self.api, self.out = args, api, out
        self.give_up_after: float = getattr(args, "give_up_after", 300.0)

    def retrying(self, e: ApiError, delay: float) -> None:
        """Say that the server is away and when the next try is."""
        self.out.note(f"precheck: {e.message}; trying again in {delay:.1f} s", "yellow")

    async def run_doc(self, run_id: str) -> dict[str, Any]:
        """The run's document, tried again while the server is away."""
        return await with_retries(
            lambda: self.api.run(run_id), give_up_after=self.give_up_after, on_retry=self.retrying
        )

    async def follow_to_end(self, run_id: str, *, logs: bool) -> dict[str, Any]:
        """Follow the run's stream until it is final; the final document."""
        follower = Follower(
            self.api,
            run_id,
            events=True,
            logs=logs,
            give_up_after=self.give_up_after,
            on_retry=self.retrying,
        )
        watcher = Watcher(self.out, show_updates=logs or not self.out.json_mode)
        final: dict[str, Any] | None = None
        async for item in follower.items():
            watcher.show(item)
            if isinstance(item, End):
                final = item.data
        if final is None or not outcome.is_final(final):
            final = await self.run_doc(run_id)  # an `end` always carries the final document
        if not outcome.is_final(final):
            raise ApiError(f"run {run_id} ended its stream while {outcome.status_of(final)}")
        return final

    async def download(self, doc: dict[str, Any], folder: Path | None) -> list[dict[str, Any]]:
        """Fetch the final run's files; what was saved, as documents."""
        folder = folder or Path(f"precheck-{doc['Id']}")
        downloader = Downloader(self.api, self.out, folder, give_up_after=self.give_up_after)
        return [s.document() for s in await downloader.all(doc)]

    def verdict(self, doc: dict[str, Any]) -> int:
        """Say how the run ended; its exit code."""
        code = outcome.exit_code(doc)
        style = {0: "green", 1: "red"}.get(code, "yellow")
        self.out.note(f"run {doc['Id']} {outcome.verdict(doc)}", style)
        return code


# The commands --------------------------------------------------------------------------------


async def cmd_submit(ctx: Context) -> int:
    args, api, out = ctx.args, ctx.api, ctx.out
    layout: Path = args.layout
    total: int = args.layout_size
    await api.queue()  # the server answers and takes the key, before a long upload
    out.note(f"uploading {layout.name} ({size(total)}) to {api.server}")
    bar = out.progress(total, layout.name)
    try:
        upload = await api.upload(layout, total, bar)
    finally:
        bar.close()
    out.note(f"uploaded {layout.name} as {upload['Id']} (sha256 {upload['Checksums']['sha256']})")
    body: dict[str, Any] = {"upload_id": upload["Id"], "top_cell": args.top, "cob": args.cob}
    if args.die_id:
        body["die_id"] = args.die_id
    if args.slot:
        body["slot"] = args.slot
    if args.output_format:
        body["output_format"] = args.output_format
    if args.no_cache:
        body["cache"] = False
    notify = [{"webhook": u} for u in args.notify_webhook]
    notify += [{"email": a} for a in args.notify_email]
    if notify:
        body["notify"] = notify
    try:
        doc = await api.create(body)
    except ApiError as e:
        if e.status != 422:
            raise
        # Refused before it ran: the layout fails the precheck's first checks (pre-flight).
        out.error(e.message)
        if out.json_mode:
            out.document(
                {"type": "result", "exit_code": outcome.DESIGN_FAILURE, "refused": e.message}
            )
        return outcome.DESIGN_FAILURE
    run_id = str(doc["Id"])
    if args.no_follow:
        if out.json_mode:
            out.document(doc)
        else:
            out.line(run_id)
        return outcome.PASSED
    if out.json_mode:
        out.document({"type": "upload", "upload": upload})
        out.document({"type": "created", "run": doc})
    if (doc.get("Result") or {}).get("Reused"):
        source = doc["Result"].get("ReusedFrom")
        out.note(f"run {run_id} answered from {f'run {source}' if source else 'an identical run'}")
    else:
        out.note(f"run {run_id} created; following it")
    final = await ctx.follow_to_end(run_id, logs=True)
    files = await ctx.download(final, args.out)
    code = ctx.verdict(final)
    if out.json_mode:
        out.document({"type": "result", "exit_code": code, "run": final, "files": files})
    return code


async def cmd_status(ctx: Context) -> int:
    doc = await ctx.api.run(ctx.args.run)
    out = ctx.out
    if out.json_mode:
        out.document(doc)
        return 0
    state, queue = doc.get("State") or {}, doc.get("Queue") or {}
    labels = (doc.get("Config") or {}).get("Labels") or {}
    source = doc.get("Input") or {}
    rows = [("run", doc["Id"]), ("status", outcome.verdict(doc))]
    if outcome.status_of(doc) == "queued":
        rows.append(("queue", f"position {queue.get('Position')} of {queue.get('Length')}"))
    if progress := doc.get("Progress"):
        rows.append(("step", f"{progress['Step']} of {progress['Total']}: {progress['Name']}"))
    if words := estimate_words(doc, datetime.now(UTC)):
        rows.append(("estimate", words))
    rows += [
        ("input", f"{source.get('Filename')} ({size(source.get('Size'))})"),
        (
            "top",
            f"{labels.get('top_cell')}  die {labels.get('die_id')}  slot {labels.get('slot')}"
            f"  cob {labels.get('cob')}",
        ),
        ("created", doc.get("Created")),
    ]
    for label, field in (("started", "StartedAt"), ("finished", "FinishedAt")):
        if not str(state.get(field, "0001")).startswith("0001"):  # Docker's "never"
            rows.append((label, state.get(field)))
    output = doc.get("Output") or {}
    if output.get("Available"):
        sha = (output.get("Checksums") or {}).get("sha256")
        rows.append(("output", f"{output.get('Filename')} ({size(output.get('Size'))}, {sha})"))
    result = doc.get("Result") or {}
    if result.get("Reused"):
        rows.append(("reused", result.get("ReusedFrom") or "from an identical run"))
    for label, value in rows:
        out.line(f"{label:<9}{value}")
    return 0


async def cmd_logs(ctx: Context) -> int:
    args, api, out = ctx.args, ctx.api, ctx.out
    if args.follow:
        follower = Follower(
            api,
            args.run,
            events=False,
            logs=True,
            tail=args.tail,
            give_up_after=ctx.give_up_after,
            on_retry=ctx.retrying,
        )
        watcher = Watcher(out)
        async for item in follower.items():
            watcher.show(item)
        return 0
    params = {"tail": str(args.tail)} if args.tail is not None else {"after_line": "0"}
    lines: list[str] = []
    while True:
        page = await api.logs(args.run, **params)
        if out.json_mode:
            lines += page["lines"]
        else:
            for line in page["lines"]:
                out.line(line)
        if not page.get("has_more") or not page["lines"]:
            break
        params = {"after_line": str(page["last_line"])}
    if out.json_mode:
        out.document({"lines": lines})
    return 0


async def cmd_wait(ctx: Context) -> int:
    final = await ctx.follow_to_end(ctx.args.run, logs=False)
    if ctx.out.json_mode:
        ctx.out.document(final)
    return ctx.verdict(final)


async def cmd_download(ctx: Context) -> int:
    doc = await ctx.run_doc(ctx.args.run)
    if not outcome.is_final(doc):
        raise ApiError(
            f"run {doc['Id']} is {outcome.status_of(doc)}: its files are final only once it "
            f"is; wait for it with `precheck wait {doc['Id']}`"
        )
    files = await ctx.download(doc, ctx.args.out)
    code = ctx.verdict(doc)
    if ctx.out.json_mode:
        ctx.out.document({"exit_code": code, "run": doc, "files": files})
    return code


async def cmd_cancel(ctx: Context) -> int:
    doc = await ctx.api.cancel(ctx.args.run)
    if ctx.out.json_mode:
        ctx.out.document(doc)
    else:
        status = outcome.status_of(doc) or "cancelling"
        ctx.out.line(f"{doc.get('Id', ctx.args.run)} {status}")
    return 0


async def cmd_list(ctx: Context) -> int:
    docs = await ctx.api.runs(ctx.args.status)
    out = ctx.out
    if out.json_mode:
        out.document(docs)
        return 0
    out.line(f"{'RUN':<32}  {'STATUS':<10}  {'TOP':<16}  {'CREATED':<27}  VERDICT")
    for doc in docs:
        labels = (doc.get("Config") or {}).get("Labels") or {}
        out.line(
            f"{doc['Id']:<32}  {outcome.status_of(doc):<10}  {labels.get('top_cell', ''):<16}  "
            f"{doc.get('Created', ''):<27}  {outcome.verdict(doc)}"
        )
    return 0


COMMANDS: dict[str, Callable[[Context], Awaitable[int]]] = {
    "submit": cmd_submit,
    "status": cmd_status,
    "logs": cmd_logs,
    "wait": cmd_wait,
    "download": cmd_download,
    "cancel": cmd_cancel,
    "list": cmd_list,
}


def _check(args: argparse.Namespace) -> None:
    """What can be checked before any request; `UsageError` otherwise."""
    if args.command == "submit":
        layout: Path = args.layout
        if not layout.is_file():
            raise UsageError(f"{layout}: no such file")
        args.layout_size = layout.stat().st_size


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


async def _dispatch(args: argparse.Namespace, out: Output) -> int:
    server = getattr(args, "server", None) or os.environ.get("PRECHECK_URL") or DEFAULT_SERVER
    key = getattr(args, "key", None) or os.environ.get("PRECHECK_API_KEY") or None
    use_env_proxy = getattr(args, "use_env_proxy", False) or _env_flag("PRECHECK_USE_ENV_PROXY")
    async with Api(server, key, use_env_proxy=use_env_proxy) as api:
        return await COMMANDS[args.command](Context(args, api, out))


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else outcome.USAGE
    out = Output(json_mode=getattr(args, "json", False))
    try:
        _check(args)
        return asyncio.run(_dispatch(args, out))
    except UsageError as e:
        out.error(str(e))
        return outcome.USAGE
    except ApiError as e:
        out.error(e.message)
        return outcome.SERVER_ERROR
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except BrokenPipeError:  # the reader of stdout left (`| head`): as a shell's SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
