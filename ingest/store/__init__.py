"""Stage 3, storage: the master and tenant stores, migrations, secrets at rest, and the
registration payloads checked before anything touches a database."""
