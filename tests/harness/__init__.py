"""Test-only wrappers around the real services (nothing here ships in an image)."""
