"""The debug routes as an ASGI app and a WSGI app, to mount in an existing web service.

    app.mount("/", labotel.asgi_app())        # Starlette / FastAPI
    DispatcherMiddleware(flask_app, {"/debug": ...}) or wsgi_app() as a fallback

Both call the same router as labotel's own debug server, with its body limit
(``admin_max_body_bytes``, 413) and its HEAD rule (GET's headers, no body); framing,
timeouts and connection limits are the hosting server's. Handlers may block (a 30 s CPU
profile), so the ASGI adapter runs them in a worker thread and listens meanwhile for
``http.disconnect``: a client that hangs up cancels the request, and a profile waiting
out ``?seconds=`` stops. WSGI has no way to tell that a client left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from labotel.digits import ascii_digits
from labotel.server.http import Request, Response, Router, text_response

RouterSource = Callable[[], Router]


def _too_large(router: Router) -> Response:
    return text_response(f"request body over the limit of {router.max_body_bytes} bytes\n",
                         413)


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
        router = router_source()
        method = scope.get("method", "GET")
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > router.max_body_bytes:
                await _send(send, _too_large(router), method)
                return
            more = message.get("more_body", False)
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request = Request.build(method, path, scope.get("query_string", b"").decode("latin-1"),
                                headers, bytes(body))
        response = await _handle_until_disconnect(router, request, receive)
        await _send(send, response, method)

    return app


async def _handle_until_disconnect(router: Router, request: Request,
                                   receive: Callable) -> Response:
    """Run the router on a thread; cancel the request if the client disconnects meanwhile."""
    handler = asyncio.ensure_future(asyncio.to_thread(router.handle, request))
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher.done():
            request.cancelled.set()
        return await handler
    except asyncio.CancelledError:  # the server is shutting down this request
        request.cancelled.set()
        raise
    finally:
        watcher.cancel()


async def _disconnected(receive: Callable) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send(send: Callable, response: Response, method: str) -> None:
    await send({"type": "http.response.start", "status": response.status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in response.header_items()]})
    await send({"type": "http.response.body",
                "body": b"" if method == "HEAD" else response.body})


def wsgi_app(router_source: RouterSource) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        router = router_source()
        method = environ.get("REQUEST_METHOD", "GET")
        response = None
        raw_length = (environ.get("CONTENT_LENGTH") or "0").strip()
        if not ascii_digits(raw_length):  # isdigit() took "³", which int() then refused
            response = text_response(
                "invalid Content-Length (expected a non-negative integer)\n", 400)
        elif int(raw_length) > router.max_body_bytes:
            response = _too_large(router)
        else:
            length = int(raw_length)
            body = environ["wsgi.input"].read(length) if length else b""
            headers = {key[5:].replace("_", "-"): value for key, value in environ.items()
                       if key.startswith("HTTP_")}
            request = Request.build(method, environ.get("PATH_INFO", "/"),
                                    environ.get("QUERY_STRING", ""), headers, body)
            response = router.handle(request)
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        start_response(f"{response.status} {reason}", response.header_items())
        return [b"" if method == "HEAD" else response.body]

    return app
