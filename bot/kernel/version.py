"""The version opsbot reports (/status, /version, metrics, the HTTP server)."""

__version__ = "0.1.0"
