"""A real gRPC client (grpcio, /usr/bin/python3) for tests/tests/proxy_grpc.rs: plain-text h2c
(an insecure channel, prior knowledge) to `TARGET` (ADDR:PORT) with `:authority` AUTHORITY,
one unary `/enforcer.test.Echo/Say` call per remaining argument (raw-bytes messages). Prints a
JSON list: `{"ok": REPLY}` or `{"code": STATUS_NAME, "details": TEXT}` per call.

Usage: grpc_client.py TARGET AUTHORITY MESSAGE...
"""
import json
import sys

import grpc

target, authority = sys.argv[1], sys.argv[2]
options = [('grpc.default_authority', authority), ('grpc.enable_http_proxy', 0)]
out = []
with grpc.insecure_channel(target, options=options) as channel:
    say = channel.unary_unary('/enforcer.test.Echo/Say')
    for msg in sys.argv[3:]:
        try:
            out.append({'ok': say(msg.encode(), timeout=15).decode()})
        except grpc.RpcError as e:
            out.append({'code': e.code().name, 'details': e.details()})
print(json.dumps(out), flush=True)
