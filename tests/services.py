"""Real services for the test suite (filled in by the fixtures work)."""
