"""The OpenID Connect provider of the auth service (docs/auth.md, "OpenID Connect provider").

- ``clients``: registered clients (admin API) and their Authlib view;
- ``server``: Authlib's authorization server, its grants and endpoints, adapted
  to aiohttp (Authlib's server is synchronous: it runs in a worker thread and
  reaches our async store through the event loop);
- ``provider``: discovery, userinfo, the provider's own sign-in session and
  the pending authorization requests;
- ``pages``: the server-rendered HTML pages (strict CSP, CSRF, no JavaScript);
- ``routes``: the HTTP routes, registered on the auth service's ``Api``.
"""
