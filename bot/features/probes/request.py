"""What an HTTP probe sends and which answers it accepts, as the config makes it.

Kept free of httpx (slow to import): the config models build it at start-up.
"""

from __future__ import annotations

from msgspec import Struct

__all__ = ["HttpRequest"]


class HttpRequest(Struct, frozen=True):
    """``headers`` hold resolved values, secrets included: never log or show them."""

    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    expect_status: frozenset[int] = frozenset()  # empty: any 2xx

    def expects(self, status: int) -> bool:
        if self.expect_status:
            return status in self.expect_status
        return 200 <= status < 300

    @property
    def follows_redirects(self) -> bool:
        # A redirect that is itself the expected answer ends the exchange.
        return not any(300 <= status < 400 for status in self.expect_status)

    @property
    def carries_credentials(self) -> bool:
        """Configured headers may be credentials: they never follow a redirect elsewhere."""
        return bool(self.headers)

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self.headers)
        return f"HttpRequest({self.method}, headers=[{names}], body={self.body is not None})"
