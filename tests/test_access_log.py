"""The access log never shows a key passed in the query, however the name is spelled."""

from __future__ import annotations

import pytest

from precheck.web.access_log import _redacted


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/a?access_token=s3cret&x=1", "/a?access_token=***&x=1"),
        ("/a?access%5Ftoken=s3cret", "/a?access%5Ftoken=***"),
        ("/a?x=1&access%5ftoken=s3cret&lastEventId=5", "/a?x=1&access%5ftoken=***&lastEventId=5"),
        ("/a?ACCESS_TOKEN=s3cret", "/a?ACCESS_TOKEN=***"),
        ("/a?access+token=kept&token=kept", "/a?access+token=kept&token=kept"),
        ("/a", "/a"),
        ("/a?access_token", "/a?access_token"),
    ],
)
def test_query_keys_that_decode_to_access_token_are_redacted(path: str, logged: str) -> None:
    """Every spelling that the server reads as `access_token` is redacted; nothing else."""
    assert _redacted(path) == logged
    assert "s3cret" not in _redacted(path)
