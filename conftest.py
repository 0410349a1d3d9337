"""Root conftest: shared service fixtures (S3, PostgreSQL, Ray head) are in tests/services.py."""

pytest_plugins = ["tests.services"]
