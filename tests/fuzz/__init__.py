"""Fuzzing and matrices, kept in the suite (issue #20; docs/security.md, "Fuzzing").

- ``test_openapi.py``: schemathesis over every service's OpenAPI document,
  through HAProxy, with real tokens (a user's, an admin's on admin routes).
  Fails on any 5xx, any status, content type or body the document does not
  list, any 405 without ``Allow``, any request the document admits that is
  refused for its shape (``validation_failed``), and any the document refuses
  that is accepted. Deterministic; ``PARLEY_FUZZ_EXAMPLES`` (default 10) sets
  the cases per operation.
- ``test_websocket.py``: Hypothesis over WebSocket frames (every op, wrong
  types, missing fields, huge numbers, unicode, binary, oversized,
  interleaved): documented error and close codes only, nothing stored, the
  pod keeps serving others.
- ``test_mismatches.py``: one test for each mismatch the fuzzer found.
- ``test_authz_matrix.py``: every operation of every document that needs a
  token x {no token, expired, another user's, a plain user's on an admin
  route, a blocked user's}: refused with a status the operation documents.
  Generated from the documents: a new route is covered without a line here.

Each prints its counts (``pytest -s`` or ``-rA`` shows them).
"""
