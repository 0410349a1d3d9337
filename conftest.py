"""Root conftest: shared service fixtures (moto S3 server, PostgreSQL, Ray) live in tests/services.py."""

pytest_plugins = ["tests.services"]
