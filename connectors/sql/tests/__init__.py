"""Tests of the SQL source library (real SQLite files and a real PostgreSQL server)."""
