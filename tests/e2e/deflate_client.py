"""A gateway client using the `websockets` library's permessage-deflate, for
tests/e2e/permessage_deflate.rs (an implementation of RFC 7692 independent of ours).

    python deflate_client.py WS_URL TOKEN OFFER

OFFER: `default` (websockets' own offer: permessage-deflate; client_max_window_bits, context
takeover both ways) or `no-context` (client_no_context_takeover; server_max_window_bits=10).
The client connects through a local TCP relay that counts the bytes the server sends, then
prints one JSON object per line on stdout:

    {"extensions": "..."}                      the server's Sec-WebSocket-Extensions, or null
    {"identified": true}                       after Hello and Identify → op 12 (the test then
                                               publishes an event)
    {"event": {...}, "wire_bytes": N}          the next message, and the bytes it took on the wire
    {"acks": N}                                N heartbeats sent compressed, each answered by op 7
    {"closed": CODE}                           after sending a message inflating to 8 MiB

Any failure prints {"error": "..."} and exits with 1.
"""

import asyncio
import json
import sys
from urllib.parse import urlsplit

import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory


class Relay:
    """Forwards one TCP connection to the gateway, counting the bytes it sends back."""

    def __init__(self, host, port):
        self.host, self.port, self.downstream = host, port, 0

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, client_reader, client_writer):
        reader, writer = await asyncio.open_connection(self.host, self.port)

        async def pipe(source, sink, count):
            try:
                while data := await source.read(65536):
                    if count:
                        self.downstream += len(data)
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(client_reader, writer, False), pipe(reader, client_writer, True))


def say(**fields):
    print(json.dumps(fields), flush=True)


async def recv_json(ws):
    message = await asyncio.wait_for(ws.recv(), 10)
    if not isinstance(message, str):
        raise RuntimeError(f"expected a text message, got {len(message)} bytes of binary")
    return json.loads(message)


async def main(url, token, offer):
    parts = urlsplit(url)
    relay = Relay(parts.hostname, parts.port)
    port = await relay.start()
    relayed = url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{port}", 1)
    if offer == "default":
        options = {}
    elif offer == "no-context":
        options = {
            "extensions": [
                ClientPerMessageDeflateFactory(
                    client_no_context_takeover=True, server_max_window_bits=10
                )
            ]
        }
    else:
        raise RuntimeError(f"unknown offer {offer}")
    async with websockets.connect(relayed, max_size=None, **options) as ws:
        say(extensions=ws.response.headers.get("Sec-WebSocket-Extensions"))
        hello = await recv_json(ws)
        assert hello["op"] == "1", hello
        await ws.send(json.dumps({"n": "core", "op": "2", "d": {"token": token}}))
        ready = await recv_json(ws)
        assert ready["op"] == "12", ready
        # Everything up to op 12 has passed the relay; what comes next is the test's event.
        before = relay.downstream
        say(identified=True)
        event = await recv_json(ws)
        say(event=event, wire_bytes=relay.downstream - before)
        last = int(event["s"])
        for _ in range(5):
            # Padded past the server's compression threshold; websockets compresses it.
            await ws.send(json.dumps({"n": "core", "op": "0", "d": {
                "from": "0", "to": str(last), "except": []}, "padding": "heartbeat " * 20}))
            ack = await recv_json(ws)
            assert ack["op"] == "7", ack
            last = int(ack["s"])
        say(acks=5)
        await ws.send(json.dumps({"n": "core", "op": "0", "padding": " " * (8 << 20)}))
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            say(closed=closed.rcvd.code if closed.rcvd else None)


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except Exception as error:  # noqa: BLE001 - reported to the test, which fails on it
        say(error=f"{type(error).__name__}: {error}")
        sys.exit(1)
