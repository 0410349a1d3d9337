"""The app service: `connector-runtime serve module:App`, the framework's HTTP routes on
FastAPI and uvicorn.

It holds no state of its own. Handler requests run in the service (short, no durable work);
runs never do: a start launches a driver (a local process, or a Ray job when attached to a
cluster) that claims and runs exactly as `connector-runtime run` does, and status, results and
metrics are read from the store. Any number of replicas can front one store.

Rooms: `_config` (settings and their checks), `_discovery` (which Handler), `_invoke` (one
handler call: thread, timeout, scrubbed errors), `_launcher` (drivers: process or Ray job),
`_runs` (start/status/stop/result/list over the store), `_routes` (the /workflows/v1 routes),
`_security` (bearer token, body limit), `_metrics` (Prometheus from the store), `_app` (the
FastAPI app, probes, error answers), `_serve` (the CLI verb). Design notes: docs/service.md.
"""

from ._app import create_app
from ._config import ServiceConfig, ServiceConfigError
from ._discovery import find_handler
from ._serve import config_from_args, serve

__all__ = ["ServiceConfig", "ServiceConfigError", "config_from_args", "create_app",
           "find_handler", "serve"]
