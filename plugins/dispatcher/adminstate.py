"""The entries an operator disabled, kept across reloads and restarts (loop thread).

``dispatcher.set_state d`` (or ``set_duid_state d``) puts an entry here and any other state
takes it out; the content goes to the state file (:mod:`plugins.dispatcher.statefile`, written
off the loop). After every load the entries still loaded are put back in D and the others are
forgotten.

In a cluster (``[cluster]``) an operator's change is also handed to the shared state
(``on_operator``), which tells the other nodes; what they changed comes back through
:meth:`AdminState.note_remote` and is kept in this node's state file too, so a node that
restarts while Redis is unreachable still knows the cluster's disables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from loguru import logger

from plugins.dispatcher import statefile
from plugins.dispatcher.model import Destination
from plugins.dispatcher.runtime import DestKey, DispatcherState

#: the reason given with the state changes an operator's earlier disable causes after a load
REASON = "disabled by an operator (state file)"


class AdminState:
    """The operator-disabled entries, and the state file they are kept in.

    :param writer: writes the state file; None when ``state_file`` is off (memory only).
    :param on_operator: told about every operator change (``dests``, disabled?): the cluster.
    """

    def __init__(self, writer: statefile.StateWriter | None = None,
                 on_operator: Callable[[Sequence[Destination], bool], None] | None = None) -> None:
        self._writer = writer
        self._on_operator = on_operator
        #: (set id, URI lower-cased) -> URI as loaded; replaced whole on every change, so another
        #: thread holding the old mapping reads a consistent one
        self.disabled: dict[DestKey, str] = {}

    def read(self) -> None:
        """Read the state file (start-up). A bad file is logged and ignored: never a reason not to start."""
        if self._writer is None:
            return
        try:
            found = statefile.read_state_file(self._writer.path)
        except statefile.StateFileError as exc:
            logger.error("dispatcher: ignoring the admin state file: {}", exc)
            found = {}
        if found:
            logger.info("dispatcher: {} entries disabled by an operator ({})", len(found), self._writer.path)
        self.disabled = found

    def note(self, dests: Iterable[Destination], letters: str) -> None:
        """An operator set ``dests`` to ``letters``: D puts them in, any other state takes them out."""
        disable = letters.strip().lower()[:1] in ("d", "2")
        dests = list(dests)
        self._set(statefile.with_entries(self.disabled, [(d.setid, d.uri) for d in dests], disable))
        if self._on_operator is not None:
            self._on_operator(dests, disable)

    def note_remote(self, key: DestKey, uri: str, disabled: bool) -> None:
        """Another node's operator set ``key`` (D or not); kept here, not told back."""
        if (key in self.disabled) != disabled:
            self._set(statefile.with_entries(self.disabled, [(key[0], uri)], disabled))

    def replace(self, disabled: dict[DestKey, str]) -> None:
        """The cluster's disables replace this node's (start-up, after Redis was unreachable)."""
        self._set(dict(disabled))

    def forget(self, setid: int, uri: str) -> None:
        """The entry was removed from memory (``dispatcher.remove``)."""
        self._set(statefile.with_entries(self.disabled, [(setid, uri)], disable=False))

    def apply(self, state: DispatcherState) -> None:
        """After a load: the disabled entries still loaded go (back) to D; the others are forgotten."""
        kept, dropped = statefile.split_loaded(self.disabled, lambda key: state.destination(key) is not None)
        for (setid, _), uri in dropped.items():
            logger.info("dispatcher: set {} {} is no longer loaded: its admin disable is forgotten", setid, uri)
        for setid, key in kept:
            state.set_state(setid, key, "d", reason=REASON)
        self._set(kept)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait for pending state-file writes (tests, shutdown); False on timeout."""
        return self._writer.flush(timeout) if self._writer is not None else True

    def close(self) -> None:
        """Finish pending writes (shutdown)."""
        if self._writer is not None:
            self._writer.close()

    def _set(self, updated: dict[DestKey, str]) -> None:
        if updated == self.disabled:
            return
        self.disabled = updated
        if self._writer is not None:
            self._writer.save(updated)
