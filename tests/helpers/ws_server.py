# A WebSocket echo server over TLS (python3-websockets): `ADDR PORT CERT KEY`. Every text
# message comes back as "echo <message>", every binary one unchanged; a message "path" is
# answered with the request path. Prints `ready` once listening.
import asyncio
import ssl
import sys

import websockets

addr, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


async def echo(ws, path=None):
    path = path or getattr(ws, 'path', None) or getattr(getattr(ws, 'request', None), 'path', '?')
    async for m in ws:
        if isinstance(m, str):
            await ws.send(path if m == 'path' else 'echo ' + m)
        else:
            await ws.send(m)


async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    async with websockets.serve(echo, addr, port, ssl=ctx, max_size=None):
        print('ready', flush=True)
        await asyncio.Future()


asyncio.run(main())
