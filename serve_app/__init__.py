"""The Ray Serve application: a FastAPI ingress of thin handlers over ingest/."""
