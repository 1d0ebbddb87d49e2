"""The storage engine: streams on SQLite, group-committed, with live-read notification."""
