"""A replica of a cluster on Redis: its part in the cluster (:mod:`.replica`:
the lease, reading the log, demand both ways, presence, and the replica's
:class:`~app.streams.eventlog.EventLog`), the Redis side (:mod:`.redislog`:
scripts, keys, the lease) and the log's entries and checkpoints, encoded
(:mod:`.entries`, pure). It imports everything below the gateway's wiring;
nothing of HTTP."""
