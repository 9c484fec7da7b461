"""The event log: event types, their JSON codec and the SQLite store."""
