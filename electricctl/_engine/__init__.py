"""The shape engine: one client's subscriptions, served from the durable log and from snapshots,
projected by its grants. It speaks in relations, rows and changes; a protocol adapter (the
Satellite connection today, the HTTP Shape API next) turns what it emits into frames."""
