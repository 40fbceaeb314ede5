"""The debug HTTP surface: one router served by the stdlib server, ASGI and WSGI."""
