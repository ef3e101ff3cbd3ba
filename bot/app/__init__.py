"""The application: wiring one bot from its config (runtime), the CLI, the HTTP server and
logging. The only layer that knows every other.
"""
