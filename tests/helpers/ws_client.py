# A WebSocket client (python3-websockets): `URI ADDR PORT`: connects to ADDR:PORT for URI
# (plain ws://, the Host header from URI), sends "path", a short text, a 70 000-byte text and a
# binary message, and prints {"replies": [...]} (texts cut to 40 characters, with their
# lengths; binary as hex) as one JSON line.
import asyncio
import json
import sys

import websockets

uri, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])


async def main():
    out = []
    async with websockets.connect(uri, host=addr, port=port, max_size=None) as ws:
        for m in ['path', 'hello', 'x' * 70000, b'\x00\x01binary']:
            await ws.send(m)
            r = await ws.recv()
            out.append({'text': r[:40], 'len': len(r)} if isinstance(r, str) else {'hex': r.hex()})
    print(json.dumps({'replies': out}), flush=True)


asyncio.run(main())
