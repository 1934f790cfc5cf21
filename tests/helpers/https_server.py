"""HTTP/1.1 server for the proxy tests (tests/src/servers.rs starts it inside a netns).

Arguments: `ADDR PORT CERT KEY` (TLS) or `ADDR PORT plain`. Keep-alive, one thread per
connection. Paths:
- `/status/N`: status N, body `status N\n`;
- `/bytes/N`: 200 with exactly N bytes (Content-Length), generated and written in 64 KiB chunks
  (never held in memory whole);
- anything else: 200, body `hello path=P host=H sni=S peer=ADDR:PORT\n` (S: the ClientHello's
  server_name as the server saw it, `-` for none or plain; ADDR:PORT: the client as seen by the
  server).

The TLS handshake runs in the connection's thread (a silent client never blocks accepts).
Prints `ready` once listening.
"""
import http.server, socket, socketserver, ssl, sys
addr, port = sys.argv[1], int(sys.argv[2])
tls = sys.argv[3] != 'plain'
CHUNK = bytes(range(256)) * 256
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a):
        pass
    def reply(self, code, body):
        self.send_response(code)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        p = self.path
        if p.startswith('/status/'):
            code = int(p[8:])
            return self.reply(code, ('status %d\n' % code).encode())
        if p.startswith('/bytes/'):
            n = int(p[7:])
            self.send_response(200)
            self.send_header('Content-Type', 'application/octet-stream')
            self.send_header('Content-Length', str(n))
            self.end_headers()
            while n > 0:
                k = min(n, len(CHUNK))
                self.wfile.write(CHUNK[:k] if k < len(CHUNK) else CHUNK)
                n -= k
            return
        sni = getattr(self.connection, 'sni_name', None) or '-'
        peer = '%s:%d' % self.client_address[:2]
        body = 'hello path=%s host=%s sni=%s peer=%s\n' % (p, self.headers.get('Host', '-'), sni, peer)
        self.reply(200, body.encode())
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    address_family = socket.AF_INET6 if ':' in addr else socket.AF_INET
    def handle_error(self, request, client_address):
        pass  # refused handshakes (wrong-CA tests) are expected
srv = S((addr, port), H)
if tls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    def on_sni(sock, name, _ctx):
        try:
            sock.sni_name = name
        except Exception:
            pass
    ctx.sni_callback = on_sni
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
print('ready', flush=True)
srv.serve_forever()
