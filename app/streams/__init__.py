"""From state to clients: the event log (:mod:`.eventlog`: its port and the
in-process log), the fan-out that writes each event to every stream at publish
time (:mod:`.fanout`), the caps on streams (:mod:`.admission`), and the hub
that puts them together as the ingest side's way in and the streams'
:class:`~app.ports.Feed` (:mod:`.hub`). It imports :mod:`app.domain`,
:mod:`app.state` and :mod:`app.ports`; nothing of ingest, the cluster or HTTP."""
