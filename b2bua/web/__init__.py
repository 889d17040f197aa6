"""The web status page: a static page served by the HTTP control listener, and its data route.

The page (``GET /status``: HTML, one script, one style sheet, all in ``static/`` beside this
module) holds no data and needs no token; it asks the operator for the control token, keeps it
in the tab's ``sessionStorage`` and fetches everything it shows from ``GET /status/data``
(:data:`~b2bua.control_routes.Access.READ`: ``[control] read_token`` or ``token``), every few
seconds. Its maintenance buttons call JSON-RPC methods (``POST /rpc``, ``token`` only) with the
same token. ``docs/web.md`` describes the page; :func:`web_routes` builds its routes.
"""

from __future__ import annotations

from b2bua.web.routes import PAGE_HEADERS, STATUS_METHODS, status_request, web_routes

__all__ = ["PAGE_HEADERS", "STATUS_METHODS", "status_request", "web_routes"]
