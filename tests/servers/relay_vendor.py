"""A vendor for hypercorn (whose HTTP/2 stack, not ours, frames the answers) that relays each
license request to licensegate-sim (RELAY_TO, over HTTP/1.1) and answers what the simulator
answered, with its Content-Length. The last path segment picks how the answer ends:

- together: the body and END_STREAM in one DATA frame
- late-end: the body, then END_STREAM on an empty DATA frame 20 ms later
"""

import asyncio
import os
import urllib.request

RELAY_TO = os.environ["RELAY_TO"]


def relay(body, content_type):
    request = urllib.request.Request(RELAY_TO, data=body, method="POST",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, answer.read()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    content_type = dict(scope["headers"]).get(b"content-type", b"application/octet-stream")
    status, answer = await asyncio.to_thread(relay, body, content_type.decode())
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(len(answer)).encode())]})
    if scope["path"].endswith("/late-end"):
        await send({"type": "http.response.body", "body": answer, "more_body": True})
        await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send({"type": "http.response.body", "body": answer, "more_body": False})
