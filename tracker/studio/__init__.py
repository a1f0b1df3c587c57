"""``tracker studio``: a local web app to look at a workspace's images and judge them.

``app`` builds the FastAPI application (pages rendered from ``templates/studio/`` with the report's Jinja2
autoescaping; one static script; no CDN), ``serve`` runs it with uvicorn on 127.0.0.1 behind a random token, as
Jupyter does. Ratings are stored by ``tracker.metrics.ratings``.
"""
