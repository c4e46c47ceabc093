"""coinsuper-gateway: one upstream session to Coinsuper's push feed, served to many."""

__version__ = "0.1.0"
