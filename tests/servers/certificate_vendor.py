"""A vendor answering Widevine service certificate requests, for hypercorn (whose HTTP/2 stack,
not ours, decides the framing). The last path segment picks how the answer ends:

- length:   Content-Length, the body, then END_STREAM on an empty DATA frame
- split:    no Content-Length, the body, then END_STREAM on an empty DATA frame
- trailers: no Content-Length, the body, then END_STREAM on a trailers HEADERS frame

GET /count answers how many certificate requests arrived.
"""

CERTIFICATE = bytes([0x08, 0x05]) + b"service-certificate-" * 24
requests = 0


async def app(scope, receive, send):
    global requests
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/count":
        body = str(requests).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    requests += 1
    framing = scope["path"].rsplit("/", 1)[-1]
    headers = [(b"content-type", b"application/octet-stream")]
    if framing == "length":
        headers.append((b"content-length", str(len(CERTIFICATE)).encode()))
    trailers = framing == "trailers"
    await send({"type": "http.response.start", "status": 200, "headers": headers,
                "trailers": trailers})
    await send({"type": "http.response.body", "body": CERTIFICATE, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    if trailers:
        await send({"type": "http.response.trailers",
                    "headers": [(b"x-certificate", b"complete")], "more_trailers": False})
