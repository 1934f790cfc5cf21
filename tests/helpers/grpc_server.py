"""A real gRPC server for the proxy's gRPC test (tests/tests/proxy_grpc.rs): grpcio (Debian's
python3-grpcio, run with /usr/bin/python3) over TLS, which offers h2 by ALPN, as every gRPC server
does. No generated stubs: one unary method with raw-bytes messages (a generic handler).

Arguments: `ADDR PORT CERT KEY`. Method `/enforcer.test.Echo/Say`: the request `missing` fails
with NOT_FOUND ("no such item"), `denied` with PERMISSION_DENIED; anything else is answered
`echo REQUEST`. Prints `ready` once listening.
"""
import sys
from concurrent import futures

import grpc

addr, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


def say(request, context):
    if request == b'missing':
        context.abort(grpc.StatusCode.NOT_FOUND, 'no such item')
    if request == b'denied':
        context.abort(grpc.StatusCode.PERMISSION_DENIED, 'not yours')
    return b'echo ' + request


handler = grpc.method_handlers_generic_handler('enforcer.test.Echo', {'Say': grpc.unary_unary_rpc_method_handler(say)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
with open(key, 'rb') as k, open(cert, 'rb') as c:
    creds = grpc.ssl_server_credentials([(k.read(), c.read())])
if server.add_secure_port('%s:%d' % (addr, port), creds) == 0:
    sys.exit('cannot listen on %s:%d' % (addr, port))
server.start()
print('ready', flush=True)
server.wait_for_termination()
