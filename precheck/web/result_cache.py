"""Answering a new run from the result cache: the parts that are not pure.

`decide` stays pure: the image the run would use now is resolved on the engines here, the
source found in the read models, its files linked into the new run's folder, and only then is
the command decided, naming the source (`QueueRun.reuse`). Any failure before the append
leaves no event and no folder; the run then queues as any other.
"""

from __future__ import annotations

import asyncio

import attrs
from aiohttp import web

from precheck.domain.commands import QueueRun, decide
from precheck.domain.result_cache import Reuse, SourceGone, find_source, key_of
from precheck.events.types import Metadata
from precheck.projections.runs import InputFile, RunRecord
from precheck.runner.current_image import current_image
from precheck.web import keys


async def answered_from_cache(app: web.Application, command: QueueRun, meta: Metadata) -> bool:
    """Queue `command` answered from an identical ended run, if there is one: True when it
    was. A command `decide` refuses raises its error, as it would without the cache."""
    state = app[keys.PROJECTIONS]
    # Refused as any run would be, before any work is done (but for the queue limits: an
    # answer takes no place in the queue; a run that is not answered meets them).
    decide(attrs.evolve(command, max_queued=0, max_running=0), state)
    supervisor = app.get(keys.SUPERVISOR)
    upload = state.uploads.get(command.upload_id)
    if supervisor is None or upload is None:
        return False  # no engine to say which image a run would use
    image = await current_image(supervisor.pool, app[keys.CONFIG].docker.image)
    if image is None:
        return False
    run = RunRecord(
        command.run_id,
        upload.id,
        command.top_cell,
        command.die_id,
        command.slot,
        command.cob,
        InputFile(upload.name, upload.filename, upload.format, upload.size, upload.sha256),
        command.now,
        output_format=command.output_format,
    )
    source = find_source(state.runs.by_id.values(), key_of(run, image.id, image.digest))
    if source is None:
        return False
    storage = app[keys.STORAGE]
    kept = [f.path for f in (*source.files, *([source.output] if source.output else []))]
    try:
        await asyncio.to_thread(storage.link_run, source.id, command.run_id, kept)
    except OSError:
        return False  # its folder (or a file of it) went meanwhile: run it
    reuse = Reuse(source.id, image.id, image.digest)
    try:
        await app[keys.HANDLER].handle(attrs.evolve(command, reuse=reuse), meta)
    except Exception as e:  # refused, or not recorded: the folder goes (a cancelled request
        # may have been recorded: its folder stays, and a start-up settles it if not)
        await asyncio.to_thread(storage.remove_run, command.run_id)
        if isinstance(e, SourceGone):
            return False
        raise
    return True
