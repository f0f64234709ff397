"""``nst-fast serve``: stylization as an HTTP service (the ``serve`` extra: FastAPI, uvicorn,
prometheus-client, python-multipart). The core package never imports this one.

- :mod:`.config`: the settings (``ServeConfig``); :mod:`.server`: uvicorn, readiness, graceful shutdown;
- :mod:`.app`: the routes; :mod:`.service`: what they call; :mod:`.admission`: options, limits, plans;
- :mod:`.jobs`: job and style records (SQLite); :mod:`.storage`: the data directory's files;
- :mod:`.scheduler`: one worker per device, batching compatible jobs; :mod:`.styles`: cached style targets;
- :mod:`.events`: progress streams (SSE); :mod:`.metrics`: Prometheus; ``page/``: the web page.
"""

from .app import create_app
from .config import ServeConfig
from .server import serve

__all__ = ["ServeConfig", "create_app", "serve"]
