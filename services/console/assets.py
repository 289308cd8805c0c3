r"""The console's static assets under /static, with cache busting by content fingerprint.

Without it an operator's browser, after an upgrade, may keep running the old console.js (heuristic caching on
Last-Modified) against the new server. So every asset URL a page emits names the content it expects:

- a file: ``/static/console.js?v=<fp>``, where ``<fp>`` is the first 12 hex digits of the SHA-256 of the file;
- a directory under which a script builds URLs of its own (Bootstrap Italia's bundle loads its fonts from
  ``<data-vendor>/fonts/...``): ``/static/vendor/bootstrap-italia-2.18.3@<fp>/fonts/...``, where ``<fp>`` is the
  first 12 hex digits of the SHA-256 of the lines ``<path below the directory>\0<SHA-256 of the file>\n`` of every
  file beneath it, in the order of their paths: any file changed, added or removed there changes it.

The fingerprints are computed once, when the app is built (`StaticAssets`). A request that names the current
fingerprint of its file (or of a directory above it) is answered ``Cache-Control: public, max-age=31536000,
immutable``: the browser never asks again, and a new release emits new URLs. Anything else (no fingerprint, a
stale one from a page of the previous release, a file added or changed on disk since start-up) gets the file
as it is now with ``Cache-Control: no-cache``: the browser may keep it but revalidates (ETag / Last-Modified)
before every use, so it never pins an old file. The security headers are added by the app's middleware
(services/console/web.py), which leaves this Cache-Control alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.responses import Response
from starlette.staticfiles import StaticFiles

FINGERPRINT_HEX = 12
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_VERSIONED_SEGMENT = re.compile(rf"^(.+)@([0-9a-f]{{{FINGERPRINT_HEX}}})$")
_CLAIM = "flows.asset_claim"  # the scope key where FingerprintedStaticFiles keeps what the URL claimed


@dataclass(frozen=True)
class _Seen:
    fingerprint: str
    size: int
    mtime_ns: int


class StaticAssets:
    """The fingerprints of every file and directory under `directory`, read once; the URLs that carry them."""

    def __init__(self, directory: Path, prefix: str = "/static") -> None:
        self.directory = directory.resolve()
        self.prefix = prefix
        self.files: dict[str, _Seen] = {}
        digests: dict[str, str] = {}
        for rel in sorted(p.relative_to(self.directory).as_posix() for p in self.directory.rglob("*") if p.is_file()):
            path = self.directory / rel
            before = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            digests[rel] = digest
            self.files[rel] = _Seen(digest[:FINGERPRINT_HEX], before.st_size, before.st_mtime_ns)
        self.dirs: dict[str, str] = {}
        for rel in sorted({parent for f in digests for parent in _parents(f)}):
            hasher = hashlib.sha256()
            for name, digest in digests.items():  # in the order of their paths, as strings
                if name.startswith(rel + "/"):
                    hasher.update(f"{name[len(rel) + 1:]}\0{digest}\n".encode())
            self.dirs[rel] = hasher.hexdigest()[:FINGERPRINT_HEX]

    def url(self, rel: str) -> str:
        """The URL of the file `rel` (a path under the directory, with /), carrying its fingerprint."""
        seen = self.files.get(rel)
        if seen is None:
            raise LookupError(f"no static asset {rel!r} under {self.directory}")
        return f"{self.prefix}/{urllib.parse.quote(rel)}?v={seen.fingerprint}"

    def directory_url(self, rel: str) -> str:
        """The URL of the directory `rel`, carrying its fingerprint: the base for URLs a script builds below it."""
        fingerprint = self.dirs.get(rel.strip("/"))
        if fingerprint is None:
            raise LookupError(f"no static directory {rel!r} under {self.directory}")
        return f"{self.prefix}/{urllib.parse.quote(rel.strip('/'))}@{fingerprint}"

    def is_current(self, rel: str, claim: _Claim, stat: os.stat_result) -> bool:
        """Whether the file `rel`, now of `stat`, is the one the URL's fingerprint names (and still the one hashed
        at start-up: a file changed on disk since then is not, whatever the URL says)."""
        seen = self.files.get(rel)
        if seen is None or (stat.st_size, stat.st_mtime_ns) != (seen.size, seen.mtime_ns):
            return False
        if claim.version == seen.fingerprint:
            return True
        return claim.directory is not None and rel.startswith(claim.directory + "/") and \
            self.dirs.get(claim.directory) == claim.directory_version


@dataclass(frozen=True)
class _Claim:
    """What a request's URL says of its content: ?v= (a file's fingerprint), a directory@fingerprint segment."""

    version: str | None = None
    directory: str | None = None
    directory_version: str | None = None


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


class FingerprintedStaticFiles(StaticFiles):
    """StaticFiles over `assets.directory` that takes off a directory@fingerprint segment before it looks the file
    up, and answers immutable or no-cache as the module docstring says (also on a 304)."""

    def __init__(self, assets: StaticAssets) -> None:
        super().__init__(directory=str(assets.directory))
        self.assets = assets

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
            version = query.get("v", [None])[-1]
            directory = directory_version = None
            route_path = _route_path(scope)
            segments = route_path.split("/")
            for i, segment in enumerate(segments):
                match = _VERSIONED_SEGMENT.match(segment)
                if match is None:
                    continue
                named = "/".join([*segments[:i], match.group(1)]).strip("/")
                if named in self.assets.dirs:
                    directory, directory_version = named, match.group(2)
                    segments[i] = match.group(1)
                    scope = {**scope, "path": scope.get("root_path", "") + "/".join(segments)}
                break
            scope = {**scope, _CLAIM: _Claim(version, directory, directory_version)}
        await super().__call__(scope, receive, send)

    def file_response(self, full_path: Any, stat_result: os.stat_result, scope: Any,
                      status_code: int = 200) -> Response:
        try:
            rel = Path(full_path).resolve().relative_to(self.assets.directory).as_posix()
        except ValueError:  # outside the directory (StaticFiles never serves that): nothing to vouch for
            rel = ""
        current = self.assets.is_current(rel, scope.get(_CLAIM, _Claim()), stat_result)
        response = super().file_response(full_path, stat_result, scope, status_code)  # the file, or a 304
        response.headers["cache-control"] = IMMUTABLE if current else REVALIDATE
        return response


def _route_path(scope: Any) -> str:
    """The path below the mount point (Starlette keeps the whole path, and the mount's in root_path)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root + "/") else path
