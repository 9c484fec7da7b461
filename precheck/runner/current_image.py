"""The image a run queued now would run: what the result cache matches against.

Resolved on every reachable engine just before deciding, so a cache answer never stands for
an image that has since changed: a tag rebuilt or re-tagged on an engine has a new id (a
locally built image has no repo digest), and an engine whose policy is `always` pulls first,
as the run's start would.
"""

from __future__ import annotations

from precheck.runner.engine import EngineError
from precheck.runner.engines import EnginePool
from precheck.runner.image_ref import ImageRef


async def current_image(pool: EnginePool, image: str) -> ImageRef | None:
    """The one image `image` names on the reachable engines, or None when that is not known
    for certain: no engine answers, one lacks it (its start would pull or fail), a pull or a
    look fails, or the engines hold different images under the name (which one a run gets
    depends on where it is placed)."""
    found: set[ImageRef] = set()
    for f in pool:
        if not f.reachable:
            continue  # a run is not placed there either
        try:
            if f.config.pull == "always":
                await f.engine.pull(image)
            ref = await f.engine.image_ref(image)
        except EngineError:
            return None
        if ref is None:
            return None
        found.add(ref)
    return found.pop() if len(found) == 1 else None
