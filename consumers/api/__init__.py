"""The HTTPS read API and the live page (`python -m consumers api`).

Modules: settings (the `api` section), auth (bearer token), tls (certificates), errors
(JSON error bodies), cursors (input validation, page tokens), reads (Cassandra reads via
consumers.queries), stages (workers' health for the page), thumbnails (images.raw),
openapi, routes, app (build and serve). static/ holds the page: plain HTML, CSS and JS.
"""

from consumers.api.settings import ApiSection, ApiSettings

# build/serve live in consumers.api.app; not imported here, so that `python -m consumers
# sink` (whose CLI registers the api subcommand) does not load aiohttp and cryptography.
__all__ = ["ApiSection", "ApiSettings"]
