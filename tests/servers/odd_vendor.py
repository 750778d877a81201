"""A vendor that answers every request oddly, over HTTP/2 with prior knowledge, framed with the
`h2` library (not our stack) as the mode given after the port says:

- headers-end: 200, one HEADERS frame carrying END_STREAM, no content-length
- empty-data: 200, HEADERS, then an empty DATA frame carrying END_STREAM, no content-length
- length-zero: 200, one HEADERS frame with content-length 0, carrying END_STREAM
- big-header: 200 with a 200 KB header, then a 2-byte body

Usage: python3 odd_vendor.py PORT MODE
"""

import asyncio
import sys

import h2.config
import h2.connection
import h2.events

PORT, MODE = int(sys.argv[1]), sys.argv[2]


def answer(connection, stream_id):
    headers = [(":status", "200"), ("content-type", "application/octet-stream")]
    if MODE == "length-zero":
        headers.append(("content-length", "0"))
    if MODE == "big-header":
        headers.append(("x-padding", "a" * 200_000))
        connection.send_headers(stream_id, headers)
        connection.send_data(stream_id, b"ok", end_stream=True)
    elif MODE == "empty-data":
        connection.send_headers(stream_id, headers)
        connection.send_data(stream_id, b"", end_stream=True)
    else:
        connection.send_headers(stream_id, headers, end_stream=True)


async def serve(reader, writer):
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, validate_outbound_headers=False))
    connection.initiate_connection()
    writer.write(connection.data_to_send())
    try:
        while data := await reader.read(65536):
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    connection.acknowledge_received_data(event.flow_controlled_length,
                                                         event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    answer(connection, event.stream_id)
            writer.write(connection.data_to_send())
            await writer.drain()
    except ConnectionError:
        pass  # the proxy closing its pooled connection at shutdown
    writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()


asyncio.run(main())
