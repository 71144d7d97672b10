"""The edge agent (``scada-ingest edge``): device sessions at a site, a bounded store-and-forward
buffer on disk, and exactly-once pushes to the cluster's ``POST /v1/ingest/realtime``.

Flow: ``config`` (the YAML file) -> ``agent`` (sessions -> ``buffer`` -> ``pusher``), with
``encode`` (columns blob, push body) and ``observe`` (metrics, health) beside them.
"""
