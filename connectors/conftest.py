"""The connectors' tests use the runtime's fixtures: one real Ray per session, the CLI runner."""

from tests.conftest import cli, file_store, ray_session

__all__ = ["cli", "file_store", "ray_session"]
