"""Every place the gateway subclasses, copies or patches a library's internals:
uvicorn's httptools protocol (:mod:`.http`: connection limits, streams handed
over), its sans-I/O WebSocket protocol (:mod:`.websocket`), its server
(:mod:`.server`: signals, the collector frozen after start), and paho's
WebSocket wrapper and aiomqtt's client (:mod:`.mqtt`). ``tests/test_drift.py``
fails, naming the library and version, when the installed source of what is
copied, subclassed or patched here is no longer the one it was written
against; pyproject.toml bounds those libraries to the versions read. It imports
:mod:`app.ports` and the problem bodies of :mod:`app.http.problems` only."""
