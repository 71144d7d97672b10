"""The embedded local stack: project-owned PostgreSQL (+ TimescaleDB) and Redis processes."""
