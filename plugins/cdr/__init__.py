"""Call records (CDRs): one structured record per call, to JSON lines and optionally SQL.

Enable it with ``[plugins] enabled = [..., "cdr"]`` and configure ``[plugins.cdr]``
(:mod:`plugins.cdr.config`); ``docs/cdr.md`` describes the records. The modules:
:mod:`~plugins.cdr.record` (a call's record from its hook calls, pure),
:mod:`~plugins.cdr.jsonl` and :mod:`~plugins.cdr.sql` (the two outputs),
:mod:`~plugins.cdr.writer` (the queue and the threads that write), :mod:`~plugins.cdr.plugin`
(the hooks).
"""
