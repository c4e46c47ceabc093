"""The HTTP side: REST snapshots, Server-Sent Events, problems."""
