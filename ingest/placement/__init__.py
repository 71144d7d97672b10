"""Where connections run: desired state read from the databases, rendezvous sharding, the pool
of connection actors per node, and the human-readable status view."""
