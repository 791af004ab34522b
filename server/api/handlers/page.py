"""The browser pages: the member page `clients/static/index.html` at `/`, the operator
page `admin.html` at `/admin` (owners and administrators: the API refuses anyone else),
and their files under `/static/`.

The page is plain files (no build step), so Tornado's `StaticFileHandler` serves them
with its ETag and Last-Modified revalidation and its path-traversal guard. Every answer
carries a strict Content-Security-Policy: scripts and styles only from this origin, no
inline code, requests only to this origin. The page authenticates with an HTTP Basic
header it builds itself and never with a cookie, so these handlers need no auth and no
`ApiHandler` base.
"""

from __future__ import annotations

from pathlib import Path

import tornado.web

# The checkout's clients/static (this file is server/api/handlers/page.py).
STATIC_DIR = Path(__file__).resolve().parents[3] / "clients" / "static"
INDEX_FILENAME = "index.html"
ADMIN_FILENAME = "admin.html"

# 'none' by default so that anything the page does not name (frames, objects, fonts,
# workers) is refused; the page needs only its own script, stylesheet and icon and
# fetches only this origin's API.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


class PageFileHandler(tornado.web.StaticFileHandler):
    """A file of the page, with the security headers every page answer carries."""

    def initialize(
        self,
        path: str = str(STATIC_DIR),
        default_filename: str | None = None,
        allowed_symlink_directory: str | list[str] | None = None,
    ) -> None:
        # Defaults here, not in the route, so the routes are plain (pattern, handler) pairs.
        super().initialize(path, default_filename, allowed_symlink_directory)

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        # The URL never holds a secret, but the page has no reason to leak it either.
        self.set_header("Referrer-Policy", "no-referrer")

    def get_content_type(self) -> str:
        content_type = super().get_content_type()
        # The files are UTF-8; say so rather than leave the browser to guess.
        if content_type.startswith("text/") and "charset" not in content_type:
            content_type += "; charset=utf-8"
        return content_type

    def set_extra_headers(self, path: str) -> None:
        # Revalidate on every load: the files change with the code, and the ETag makes an
        # unchanged file a cheap 304, so a stale app.js never meets a newer server.
        self.set_header("Cache-Control", "no-cache")


class PageIndexHandler(PageFileHandler):
    """`GET /`: the page itself."""

    def initialize(
        self,
        path: str = str(STATIC_DIR),
        default_filename: str | None = INDEX_FILENAME,
        allowed_symlink_directory: str | list[str] | None = None,
    ) -> None:
        super().initialize(path, default_filename, allowed_symlink_directory)


class AdminPageHandler(PageFileHandler):
    """`GET /admin`: the operator page. It is plain files like the member page; what
    it shows comes from the admin endpoints, which check the signed-in user's role."""

    async def get(self, path: str = ADMIN_FILENAME, include_body: bool = True) -> None:
        await super().get(ADMIN_FILENAME, include_body)

    async def head(self, path: str = ADMIN_FILENAME) -> None:
        await super().get(ADMIN_FILENAME, include_body=False)


# Appended to the application's routes by `server.api.app.make_app`. `/()` captures an
# empty path, which StaticFileHandler resolves to the folder's index.html.
PAGE_ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/()", PageIndexHandler),
    (r"/admin/?", AdminPageHandler),
    (r"/static/(.*)", PageFileHandler),
]
