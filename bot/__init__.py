"""opsbot core: the platform-neutral pipeline every chat adapter feeds."""

__version__ = "0.1.0"
