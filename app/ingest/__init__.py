"""From the exchange to the hub: the upstream links (:mod:`.links`) and their
credentials (:mod:`.credentials`), who wants which channel (:mod:`.upstream`),
the pipeline from a topic's bytes to a decoded update (:mod:`.pipeline`), and
recording and replaying what arrived (:mod:`.recording`). It imports
:mod:`app.domain`, :mod:`app.state`, :mod:`app.streams` and the MQTT patch of
:mod:`app.protocols`; nothing of the cluster or HTTP."""
