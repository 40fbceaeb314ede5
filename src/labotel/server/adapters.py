"""The debug routes as an ASGI app and a WSGI app, to mount in an existing web service.

    app.mount("/", labotel.asgi_app())        # Starlette / FastAPI
    DispatcherMiddleware(flask_app, {"/debug": ...}) or wsgi_app() as a fallback

Both call the same router as the stdlib debug server. Handlers may block (a 30 s CPU
profile), so the ASGI adapter runs them in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from labotel.server.http import Request, Router

RouterSource = Callable[[], Router]


def asgi_app(router_source: RouterSource) -> Callable[..., Any]:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request = Request.build(scope.get("method", "GET"), path,
                                scope.get("query_string", b"").decode("latin-1"), headers, body)
        response = await asyncio.to_thread(router_source().handle, request)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                for k, v in response.header_items()]})
        await send({"type": "http.response.body",
                    "body": b"" if request.method == "HEAD" else response.body})

    return app


def wsgi_app(router_source: RouterSource) -> Callable[..., Iterable[bytes]]:
    from http import HTTPStatus

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {key[5:].replace("_", "-"): value for key, value in environ.items()
                   if key.startswith("HTTP_")}
        request = Request.build(environ.get("REQUEST_METHOD", "GET"),
                                environ.get("PATH_INFO", "/"),
                                environ.get("QUERY_STRING", ""), headers, body)
        response = router_source().handle(request)
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        start_response(f"{response.status} {reason}", response.header_items())
        return [b"" if request.method == "HEAD" else response.body]

    return app
