"""The domain: channels and their names, the normalized values of the
exchange's data, decoding its payloads, aligning trade windows, channel
statuses, and the gateway's errors. Pure: it imports nothing of the gateway
outside this package, and no event loop, web, MQTT or I/O library."""
