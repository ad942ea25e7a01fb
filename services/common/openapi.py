"""OpenAPI 3.1 documents built from the routes themselves.

Handlers are registered through :class:`Api`, which records the path, method,
pydantic body/response models and error codes, wires the aiohttp route, and
produces ``/openapi.json``. Nothing is written twice: the same model that
validates a body documents it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import AfterValidator, BaseModel

from services.common.auth import AUTH_ERRORS, authenticate
from services.common.errors import ApiError, ErrorCode, http_status
from services.common.http import json_response, parse_body

Handler = Callable[..., Awaitable[Any]]


def _each_once(items: list[Any]) -> list[Any]:
    if len(set(items)) != len(items):
        raise ValueError("an item is named twice")
    return items


EACH_ONCE = AfterValidator(_each_once)
"""A list body field whose items must differ (``Annotated[list[...], EACH_ONCE]``, with
``json_schema_extra={"uniqueItems": True}`` so that the document says so)."""


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    auth: bool
    errors: Sequence[ErrorCode]
    tags: Sequence[str]
    query: dict[str, str] = field(default_factory=dict)
    role: str | None = None
    form: type[BaseModel] | None = None
    produces: str = "application/json"
    oauth_errors: dict[int, Sequence[str]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str | None = None
    page_errors: Sequence[int] = ()
    required_query: frozenset[str] = frozenset()


class Api:
    """Collects a service's operations and renders its OpenAPI document."""

    def __init__(self, title: str, version: str, description: str = "") -> None:
        self.title = title
        self.version = version
        self.description = description
        self.operations: list[tuple[Operation, Handler]] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        body: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        auth: bool = False,
        errors: Sequence[ErrorCode] = (),
        tags: Sequence[str] = (),
        query: dict[str, str] | None = None,
        role: str | None = None,
        form: type[BaseModel] | None = None,
        produces: str = "application/json",
        oauth_errors: dict[int, Sequence[str]] | None = None,
        params: dict[str, dict[str, Any]] | None = None,
        description: str | None = None,
        page_errors: Sequence[int] = (),
        guard: Callable[[web.Request, Any], object] | None = None,
        required_query: Sequence[str] = (),
    ) -> Callable[[Handler], Handler]:
        """Register a handler: ``handler(request, *, claims=..., body=...)``.

        With ``auth``, the caller's token is verified (and its revocation and
        ``role`` checked) before anything else, the body included, and the
        handler receives the verified :class:`~services.common.auth.Claims`
        as ``claims=``: this is the only place a request's token is checked (a
        route whose body carries many devices' tokens, a gateway's batch of
        acks, checks them with ``authenticate_each``). With
        ``body``, it receives the parsed model as ``body=``.

        A handler may return a web.StreamResponse, a pydantic model or plain data
        (rendered as JSON with ``status``).

        Only documented, not parsed here: ``form`` (an
        ``application/x-www-form-urlencoded`` body the handler reads itself),
        ``produces`` (the success media type, e.g. ``text/html`` for a page) and
        ``oauth_errors`` (status -> RFC 6749 error codes, answered as
        ``{"error", "error_description"}`` rather than the common error model)
        and ``page_errors`` (statuses answered with an HTML error page).

        ``guard(request, claims)`` (with ``auth``) runs before the body is read:
        a check of whose resource the path names, so that a caller who may not
        touch it learns nothing from body validation either.

        ``params`` gives the JSON Schema of path and query parameters (a string
        when not given): the handler checks them itself and answers
        ``validation_failed`` (422, documented with them) for anything else. A
        query parameter whose schema is an array is comma-separated (``style:
        form``, ``explode: false``). Query parameters are optional but those in
        ``required_query``.
        """

        if role is not None and not auth:
            raise ValueError("a route that needs a role needs auth=True")

        def decorate(fn: Handler) -> Handler:
            op = Operation(
                method.upper(),
                path,
                summary,
                body,
                response,
                status,
                auth,
                errors,
                tags,
                query or {},
                role,
                form,
                produces,
                dict(oauth_errors or {}),
                dict(params or {}),
                description,
                tuple(page_errors),
                frozenset(required_query),
            )

            @functools.wraps(fn)
            async def handler(request: web.Request) -> web.StreamResponse:
                kwargs: dict[str, Any] = {}
                if auth:
                    # Who is asking comes first: an unauthenticated caller learns
                    # nothing from body validation.
                    claims = await authenticate(request)
                    if role is not None and role not in claims.roles:
                        raise ApiError(ErrorCode.FORBIDDEN, f"This needs the {role} role.")
                    kwargs["claims"] = claims
                    if guard is not None:
                        # Whose resource it is comes before the body, too.
                        guard(request, claims)
                if body is not None:
                    kwargs["body"] = await parse_body(request, body)
                result = await fn(request, **kwargs)
                if isinstance(result, web.StreamResponse):
                    return result
                if result is None:
                    return web.Response(status=204)
                return json_response(result, status=status)

            self.operations.append((op, handler))
            return fn

        return decorate

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)

    def install(self, app: web.Application, prefix: str) -> None:
        for op, handler in self.operations:
            app.router.add_route(op.method, prefix + op.path, handler)

    def document(self, prefix: str, server_url: str | None = None) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}
        for op, _ in self.operations:
            item: dict[str, Any] = {
                "summary": op.summary,
                "operationId": f"{op.method.lower()}_{(prefix + op.path).strip('/')}".replace(
                    "/", "_"
                )
                .replace("{", "")
                .replace("}", "")
                .replace("-", "_")
                .replace(".", "_"),
                "tags": list(op.tags),
                "responses": {},
            }
            if op.description:
                item["description"] = op.description
            params = [
                {"name": name, "in": "path", "required": True, "schema": _param_schema(op, name)}
                for name in _path_params(op.path)
            ]
            for name, desc in op.query.items():
                param: dict[str, Any] = {
                    "name": name,
                    "in": "query",
                    "required": name in op.required_query,
                    "schema": _param_schema(op, name),
                    "description": desc,
                }
                if param["schema"].get("type") == "array":
                    param.update(style="form", explode=False)
                params.append(param)
            if params:
                item["parameters"] = params
            if op.auth:
                item["security"] = [{"bearer": []}]
            if op.role:
                item["x-required-role"] = op.role
            if op.body is not None:
                item["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(op.body, schemas)}},
                }
            if op.form is not None:
                item["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": _ref(op.form, schemas)}
                    },
                }
            ok: dict[str, Any] = {"description": "Success"}
            if op.response is not None:
                ok["content"] = {op.produces: {"schema": _ref(op.response, schemas)}}
            elif op.produces != "application/json":
                ok["content"] = {op.produces: {"schema": {"type": "string"}}}
            item["responses"][str(op.status)] = ok
            for st, names in sorted(op.oauth_errors.items()):
                schemas["OAuthError"] = _OAUTH_ERROR_SCHEMA
                item["responses"][str(st)] = {
                    "description": "OAuth 2.0 error codes: " + ", ".join(sorted(set(names))),
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}
                    },
                }
            for st in op.page_errors:
                item["responses"][str(st)] = {
                    "description": "An HTML page saying what is wrong",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            codes = [(code, http_status(code)) for code in op.errors]
            if op.params:
                codes.append(
                    (ErrorCode.VALIDATION_FAILED, http_status(ErrorCode.VALIDATION_FAILED))
                )
            if op.body is not None:
                codes += [
                    (c, http_status(c))
                    for c in (ErrorCode.INVALID_JSON, ErrorCode.VALIDATION_FAILED)
                ]
            if op.auth:
                # As the decorator answers them: every refusal of a token is a 401.
                codes += [(code, 401) for code in AUTH_ERRORS]
            if op.role:
                codes.append((ErrorCode.FORBIDDEN, http_status(ErrorCode.FORBIDDEN)))
            by_status: dict[int, list[str]] = {}
            for code, st in codes:
                by_status.setdefault(st, []).append(code.value)
            for st, names in sorted(by_status.items()):
                item["responses"][str(st)] = {
                    "description": "Error codes: " + ", ".join(sorted(set(names))),
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            paths.setdefault(prefix + op.path, {})[op.method.lower()] = item
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                },
            },
        }
        if server_url:
            doc["servers"] = [{"url": server_url}]
        return doc


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [c.value for c in ErrorCode]},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
                "details": {},
            },
        }
    },
}


# RFC 6749 section 5.2 (and RFC 6750 section 3.1): the protocol endpoints' own error model.
_OAUTH_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}


def _param_schema(op: Operation, name: str) -> dict[str, Any]:
    return dict(op.params.get(name, {"type": "string"}))


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


DOCS_STYLE = (
    "body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:left}"
    "tr:nth-child(even){background:#f4f4f4}"
)


def docs_csp() -> str:
    """The docs page's policy: nothing but its own inline style (by hash)."""
    digest = base64.b64encode(hashlib.sha256(DOCS_STYLE.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    )


_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """The Markdown the documents use, as HTML: `code` spans and [text](link)s."""
    out = _CODE.sub(r"<code>\1</code>", html.escape(text, quote=True))
    return _LINK.sub(r'<a href="\2">\1</a>', out)


def docs_page(doc: dict[str, Any]) -> str:
    """A self-contained HTML page listing every operation (no external assets)."""
    rows = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            codes = ", ".join(f"{st}" for st in op["responses"])
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{_inline(op['summary'])}"
                + (
                    f"<br><small>{_inline(op['description'])}</small>"
                    if op.get("description")
                    else ""
                )
                + "</td>"
                f"<td>{'bearer' if op.get('security') else ''}</td>"
                f"<td>{codes}</td></tr>"
            )
    title = html.escape(doc["info"]["title"])
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{DOCS_STYLE}</style></head><body>"
        f"<h1>{title} <small>{html.escape(doc['info']['version'])}</small></h1>"
        f"<p>{_inline(doc['info'].get('description', ''))}</p>"
        "<p>Machine-readable: <a href='openapi.json'>openapi.json</a></p>"
        "<table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Auth</th><th>Responses</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
