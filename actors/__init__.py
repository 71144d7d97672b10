"""Thin Ray actors hosting ingest/ objects: coordinator, connection, writer."""
