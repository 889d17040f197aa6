"""Fixtures for the media tests: real RTP peers (``peer.py``) next to the e2e fixtures.

``media_peer_factory`` starts a peer on a fresh 127.0.0.x address; the same kind of peer is a
gateway (its ``answer`` behaviour) and a caller (`MediaPeer.talk`, `MediaPeer.call`). At teardown
every peer is stopped, and one that reported an error (a failed command or callback) or did not
exit cleanly fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from ..harness import AddressAllocator
from .peers import MediaPeer


class MediaPeerFactory(Protocol):
    """``media_peer_factory("reject:503", tone=880, name="gw2")``: see `MediaPeer.start` for the options."""

    def __call__(self, answer: str = "answer", *, name: str | None = None, **kwargs: Any) -> MediaPeer: ...


@pytest.fixture
def media_peer_factory(workdir: Path, addresses: AddressAllocator) -> Iterator[MediaPeerFactory]:
    """Starts media peers; each is stopped when the test ends and must have run without errors."""
    started: list[MediaPeer] = []

    def start(answer: str = "answer", *, name: str | None = None, **kwargs: Any) -> MediaPeer:
        peer = MediaPeer.start(workdir, addresses.next(), name=name or f"peer{len(started) + 1}", answer=answer,
                               **kwargs)
        started.append(peer)
        return peer

    yield start
    problems = []
    for peer in started:
        rc = peer.stop()
        if rc != 0 or peer.errors():
            problems.append(f"peer {peer.name} exited {rc}\n{peer.log_tail()}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
