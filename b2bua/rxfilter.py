"""pjsip modules ahead of pjsua: requests are screened before pjsua makes a call of them.

pjsua sets up a call for every new INVITE (a call slot, a dialog, an invite session, an RTP
and an RTCP socket) before ``onIncomingCall`` reaches Python; refusing it afterwards costs
all of that, and a 100 Trying besides. The screen is two pjsip modules of our pjproject build
(``b2bua_screen_install``, ``pjsip/src/pjsua-lib/b2bua_screen.c`` in
``scripts/pjproject-patches/0006-b2bua-screen.patch``): one at priority 17, right after the
transaction layer (16) and before the dialog layer (32) and pjsua (64), sees every request that
matches no transaction: new requests and requests inside dialogs (retransmissions never reach
it); one at priority 15, before the transaction layer, sees every response.

The messages every call has and no rule can refuse are passed on in C, with no callback into
Python: a request inside a dialog pjsip holds (not a REFER) whose head is plain
ASCII within :mod:`b2bua.wire`'s limits (a call's ACK, BYE, re-INVITE), the ACK of a refusal
this filter sent statelessly (its To tag is its Via branch, which pjsip made the refusal's To
tag; pjsip drops it, as the Python screen would), and a response whose
head is plain ASCII with a status line (a call's 100, 180, 200s). Each of those cost ~100,000
instructions when every message went through Python (a ctypes callback, a copy of the message,
the text check). Every other message is given to a Python callback
here, which asks :meth:`~b2bua.guard.Gate.screen` for a :class:`~b2bua.admission.Decision` and
answers statelessly (``pjsip_endpt_respond_stateless``) or drops the request, and closes the TCP
connection of a blocked source (:func:`~b2bua.admission.closes_connection`); only what is let
in goes on to pjsua. The callback may ask pjsip's own tables, through the filter, whether a
request belongs to a dialog of ours (:meth:`RxFilter.has_dialog`: ``pjsip_ua_find_dialog``) or
a CANCEL to an INVITE still pending (:meth:`RxFilter.has_invite`: the INVITE server transaction
it cancels), the same look-ups pjsip's dialog layer makes a moment later
(``sip_ua_layer.c``), so no list of calls is kept in Python to drift from pjsip's. Measured
with ``bench/flood.py`` on a loaded 2-core machine, process CPU per flood INVITE: 70 µs
blocked, 93 µs answered 403, against 330 µs when pjsua set the call up first (whose
transaction then retransmits the 403 until Timer H); p99 setup of trusted calls meanwhile
11 ms against 4.1 s (``docs/security.md``).

pjsip's transport layer reports packets its parser dropped (``pjsip_tpmgr_set_drop_data_cb``),
which are counted.

Only pjsip's C API and its public, long-stable structs are used through ctypes
(``pjsip_tp_dropped_data``, the list links at the start of ``pjsip_hdr`` and the pool pointer
that opens ``pjsip_rx_data``); the message and its source are read by the screen's own
``b2bua_screen_message`` (pjsip's receive buffer, not a copy), so nothing depends on the layout
of ``pjsip_rx_data``. Every callback
runs on the loop thread (inside ``libHandleEvents``) and lets no exception out: a failing
screen lets the request through to pjsua, where ``App._on_incoming`` screens an INVITE again
(as a new call).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_size_t, c_ssize_t, c_uint, c_uint64, c_void_p
from typing import Any

from loguru import logger

from b2bua.admission import ALLOW_CODES, Decision, Verdict, closes_connection
from b2bua.wire import MAX_HEADERS, MAX_LINE, MAX_MESSAGE, MAX_METHOD

#: pjsip status codes a dropped packet may carry (sip_errno.h), as reason keys for the log
DROP_REASONS = {
    171020: "syntax",  # PJSIP_EINVALIDMSG
    171050: "missing-header",  # PJSIP_EMISSINGHDR
    171062: "too-big",  # PJSIP_ERXOVERFLOW
    171030: "bad-status",  # PJSIP_EINVALIDSTATUS
    171051: "bad-header",  # PJSIP_EINVALIDHDR
}
PJ_EIGNORED = 70020  #: CRLF keep-alives: not a problem

#: log the first of every this many failures of a filter callback (with its traceback)
_ERROR_EVERY = 1000
#: pjsip_role_e: the INVITE a CANCEL cancels is a server transaction of ours
PJSIP_ROLE_UAS = 1


class PjStr(Structure):
    _fields_ = [("ptr", c_void_p), ("slen", c_ssize_t)]


class PjStrIn(Structure):
    """A ``pj_str_t`` over Python bytes (kept alive by the struct while it holds them)."""

    _fields_ = [("ptr", c_char_p), ("slen", c_ssize_t)]


_ON_RX = CFUNCTYPE(c_int, c_void_p)  # pj_bool_t (*)(pjsip_rx_data*)
#: room for a source "[IPv6 address]:port" and its NUL (pjsua2 used PJ_INET6_ADDRSTRLEN + 10)
_SOURCE_SIZE = 64


class ScreenLimits(Structure):
    """``b2bua_screen_limits``: the C screen passes only what :mod:`b2bua.wire`'s rules pass."""

    _fields_ = [("max_message", c_uint), ("max_lines", c_uint), ("max_line", c_uint), ("max_method", c_uint)]

    @classmethod
    def of_wire(cls) -> ScreenLimits:
        # check_in_dialog's limits: the head's lines (start line included) and their length
        return cls(MAX_MESSAGE, MAX_HEADERS + 1, MAX_LINE, MAX_METHOD)


class ScreenCounts(Structure):
    """``b2bua_screen_counts``: messages passed in C, and given to the Python callbacks."""

    _fields_ = [("requests_passed", c_uint64), ("requests_asked", c_uint64), ("responses_passed", c_uint64),
                ("responses_asked", c_uint64)]


class DroppedData(Structure):
    """``pjsip_tp_dropped_data`` (sip_transport.h)."""

    _fields_ = [("tp", c_void_p), ("data", c_void_p), ("len", c_size_t), ("status", c_int)]


_ON_DROPPED = CFUNCTYPE(None, POINTER(DroppedData))


def text_passes(lib: ctypes.CDLL, raw: bytes, *, request: bool) -> bool:
    """The C screen's text rule for one whole message (``b2bua_screen_text_passes``): a request
    that passes it and names a live dialog, or a response that passes it, never reaches Python."""
    fn = lib.b2bua_screen_text_passes
    fn.argtypes = [POINTER(ScreenLimits), c_char_p, c_size_t, c_int]
    fn.restype = c_int
    return bool(fn(ctypes.byref(ScreenLimits.of_wire()), raw, len(raw), int(request)))


#: ``(raw, source, dialogs)``: ``dialogs`` is the filter itself, to ask about this request's dialog
RequestScreen = Callable[[bytes, str, "RxFilter"], Decision]
ResponseScreen = Callable[[bytes, str], bool]


class RxFilter:
    """Installs the modules; ``screen_request(raw, source)`` decides, ``screen_response(raw,
    source)`` keeps (True) or drops a response, ``on_dropped(reason)`` counts parser drops."""

    def __init__(self, lib: ctypes.CDLL, screen_request: RequestScreen,
                 screen_response: ResponseScreen, on_dropped: Callable[[str], None],
                 on_closed: Callable[[], None] | None = None) -> None:
        self._lib = lib
        self._screen_request = screen_request
        self._screen_response = screen_response
        self._on_dropped = on_dropped
        self._on_closed = on_closed
        self._endpt: int | None = None
        self._reasons: dict[str, tuple[Any, PjStr]] = {}
        self._sentinel = (c_void_p * 16)()  # an empty pjsip_hdr list head: only prev/next are used
        self._failures = 0
        # b2bua_screen_message's out-parameters, reused for every message (one loop thread)
        self._msg_buf = c_void_p()
        self._msg_len = c_size_t()
        self._source = ctypes.create_string_buffer(_SOURCE_SIZE)
        self._message = lib.b2bua_screen_message
        self._message.argtypes = [c_void_p, POINTER(c_void_p), POINTER(c_size_t), c_char_p, c_uint]
        self._message.restype = c_int
        self._message_args = (ctypes.byref(self._msg_buf), ctypes.byref(self._msg_len), self._source,
                              _SOURCE_SIZE)
        lib.pjsua_get_pjsip_endpt.restype = c_void_p
        lib.b2bua_screen_install.argtypes = [c_void_p, POINTER(ScreenLimits), c_void_p, c_void_p]
        lib.b2bua_screen_get_counts.argtypes = [POINTER(ScreenCounts)]
        lib.b2bua_screen_get_counts.restype = None
        lib.pjsip_endpt_respond_stateless.argtypes = [c_void_p, c_void_p, c_int, c_void_p, c_void_p, c_void_p]
        lib.b2bua_screen_close_connection.argtypes = [c_void_p]
        lib.b2bua_screen_close_connection.restype = c_int
        lib.pjsip_endpt_get_tpmgr.argtypes = [c_void_p]
        lib.pjsip_endpt_get_tpmgr.restype = c_void_p
        lib.pjsip_tpmgr_set_drop_data_cb.argtypes = [c_void_p, c_void_p]
        lib.pjsip_retry_after_hdr_create.argtypes = [c_void_p, c_int]
        lib.pjsip_retry_after_hdr_create.restype = c_void_p
        lib.pj_list_insert_before.argtypes = [c_void_p, c_void_p]
        lib.pjsip_hdr_clone.argtypes = [c_void_p, c_void_p]
        lib.pjsip_hdr_clone.restype = c_void_p
        self._allow = 0  #: the endpoint's Allow capability header (after install)
        lib.pjsip_ua_find_dialog.argtypes = [POINTER(PjStrIn), POINTER(PjStrIn), POINTER(PjStrIn), c_int]
        lib.pjsip_ua_find_dialog.restype = c_void_p
        lib.pjsip_get_invite_method.restype = c_void_p
        lib.pjsip_tsx_create_key.argtypes = [c_void_p, POINTER(PjStr), c_int, c_void_p, c_void_p]
        lib.pjsip_tsx_layer_find_tsx2.argtypes = [POINTER(PjStr), c_int]
        lib.pjsip_tsx_layer_find_tsx2.restype = c_void_p
        self._find_dialog = lib.pjsip_ua_find_dialog
        self._dialog_keys = (PjStrIn(), PjStrIn(), PjStrIn())
        self._tsx_key = PjStr()
        self._invite_method = lib.pjsip_get_invite_method()
        self._rdata = 0  #: the request being screened (has_invite reads it), 0 outside the callback
        # the callbacks and structs must outlive the endpoint: they are kept on this object
        self._on_request = _ON_RX(self._request)
        self._on_response = _ON_RX(self._response)
        self._on_drop = _ON_DROPPED(self._dropped)
        self._counts = ScreenCounts()

    @classmethod
    def available(cls, lib: ctypes.CDLL) -> bool:
        """Whether this pjsua2 build exports what the filter needs."""
        try:
            for name in ("b2bua_screen_message", "b2bua_screen_install", "b2bua_screen_get_counts",
                         "b2bua_screen_close_connection",
                         "pjsip_endpt_respond_stateless", "pjsip_tpmgr_set_drop_data_cb",
                         "pjsip_retry_after_hdr_create", "pj_list_insert_before", "pjsua_get_pjsip_endpt",
                         "pjsip_hdr_clone",
                         "pjsip_ua_find_dialog", "pjsip_get_invite_method", "pjsip_tsx_create_key",
                         "pjsip_tsx_layer_find_tsx2"):
                lib[name]
        except AttributeError:
            return False
        return True

    def install(self, allow: int = 0) -> None:
        """Register the modules and the drop counter; after ``libInit``, before ``libStart``.
        ``allow``: the endpoint's Allow header (``b2bua.capabilities``), copied into a 405 or 501."""
        endpt = self._lib.pjsua_get_pjsip_endpt()
        if not endpt:
            raise RuntimeError("pjsip has no endpoint yet (call after libInit)")
        self._endpt = endpt
        self._allow = allow
        status = self._lib.b2bua_screen_install(endpt, ctypes.byref(ScreenLimits.of_wire()),
                                                ctypes.cast(self._on_request, c_void_p),
                                                ctypes.cast(self._on_response, c_void_p))
        if status != 0:
            raise RuntimeError(f"pjsip refused the screen's modules (status {status})")
        self._lib.pjsip_tpmgr_set_drop_data_cb(self._lib.pjsip_endpt_get_tpmgr(endpt),
                                               ctypes.cast(self._on_drop, c_void_p))

    def counts(self) -> dict[str, dict[str, int]]:
        """Messages passed on in C and messages checked by the Python screen, since start-up:
        ``{"requests": {"passed": n, "checked": n}, "responses": {...}}``."""
        c = self._counts
        self._lib.b2bua_screen_get_counts(ctypes.byref(c))
        return {"requests": {"passed": c.requests_passed, "checked": c.requests_asked},
                "responses": {"passed": c.responses_passed, "checked": c.responses_asked}}

    # -- callbacks (inside pjsip; nothing may raise out of them) ------------------------------

    def _read(self, rdata: int) -> tuple[bytes, str]:
        """The message as received and its source (``address:port``, ``[v6]:port``)."""
        if not self._message(rdata, *self._message_args):
            raise RuntimeError("pjsip gave the screen no message")
        # pj_sockaddr_print writes ASCII; the message is bytes until checked
        return ctypes.string_at(self._msg_buf, self._msg_len.value), self._source.value.decode("ascii")

    def _request(self, rdata: int) -> int:
        try:
            raw, source = self._read(rdata)
            self._rdata = rdata
            try:
                decision = self._screen_request(raw, source, self)
            finally:
                self._rdata = 0
            if decision.verdict is Verdict.ACCEPT:
                return 0
            if decision.verdict is Verdict.REFUSE:
                self._respond(rdata, decision)
            if closes_connection(decision) and self._lib.b2bua_screen_close_connection(rdata) \
                    and self._on_closed is not None:
                self._on_closed()  # after the answer: it still leaves on the connection
            return 1
        except BaseException:
            self._failed("screening a request")
            return 0

    # -- pjsip's tables, asked from inside the request callback -------------------------------

    def has_dialog(self, call_id: bytes, local_tag: bytes, remote_tag: bytes) -> bool:
        """Whether pjsip holds a dialog with these keys (an in-dialog request's Call-ID, To
        tag and From tag): its dialog layer would pass the request on, not answer 481. A
        dialog lives from our first response or request until its last transaction ends, so
        a late ACK or a BYE crossing ours still finds it."""
        keys = self._dialog_keys
        for key, value in zip(keys, (call_id, local_tag, remote_tag), strict=True):
            key.ptr = value
            key.slen = len(value)
        try:
            return bool(self._find_dialog(keys[0], keys[1], keys[2], 0))
        finally:
            for key in keys:
                key.ptr = None

    def has_invite(self) -> bool:
        """Whether the CANCEL being screened cancels an INVITE pjsip still runs (the server
        transaction its Via branch names, as pjsip's dialog layer finds it); False outside the
        request callback."""
        rdata = self._rdata
        if not rdata:
            return False
        pool = c_void_p.from_address(rdata).value  # rdata->tp_info.pool opens pjsip_rx_data
        key = self._tsx_key
        if self._lib.pjsip_tsx_create_key(pool, ctypes.byref(key), PJSIP_ROLE_UAS, self._invite_method, rdata) != 0:
            return False
        return bool(self._lib.pjsip_tsx_layer_find_tsx2(ctypes.byref(key), 0))

    def _response(self, rdata: int) -> int:
        try:
            raw, source = self._read(rdata)
            return 0 if self._screen_response(raw, source) else 1
        except BaseException:
            self._failed("screening a response")
            return 0

    def _dropped(self, data: Any) -> None:
        try:
            status = data.contents.status
            if status != PJ_EIGNORED:
                self._on_dropped(DROP_REASONS.get(status, f"pjsip-{status}"))
        except BaseException:
            self._failed("counting a dropped packet")

    def _respond(self, rdata: int, decision: Decision) -> None:
        reason = self._reason(decision.reason)
        headers = None
        header = None
        if decision.retry_after or (decision.code in ALLOW_CODES and self._allow):
            pool = c_void_p.from_address(rdata).value  # rdata->tp_info.pool opens pjsip_rx_data
            if decision.retry_after:
                header = self._lib.pjsip_retry_after_hdr_create(pool, decision.retry_after)
            else:  # the endpoint's Allow, trimmed to what we take (b2bua.capabilities)
                header = self._lib.pjsip_hdr_clone(pool, self._allow)
        if header:
            head = ctypes.addressof(self._sentinel)
            self._sentinel[0] = self._sentinel[1] = head  # pj_list_init
            self._lib.pj_list_insert_before(head, header)
            headers = head
        self._lib.pjsip_endpt_respond_stateless(self._endpt, rdata, decision.code, ctypes.byref(reason),
                                                headers, None)

    def _reason(self, text: str) -> PjStr:
        known = self._reasons.get(text)
        if known is None:
            data = text.encode("ascii", "replace")[:64]
            buf = ctypes.create_string_buffer(data)
            known = self._reasons[text] = (buf, PjStr(ctypes.addressof(buf), len(data)))
        return known[1]

    def _failed(self, what: str) -> None:
        self._failures += 1
        if self._failures % _ERROR_EVERY == 1:
            logger.opt(exception=True).error("the SIP filter failed {} ({} time(s)); letting it through",
                                             what, self._failures)

