"""Server for the integration tests (tests/src/servers.rs starts it inside a netns).

Each argument is `tcp:PORT` or `udp:PORT`, bound dual-stack on `::` (so every address of the
namespace answers). TCP answers one HTTP/1.0 response whose body is `hello from ADDR:PORT` (the
local address that was reached); UDP echoes `echo ADDR:PORT`. Prints `ready` once everything is
bound.
"""
import socket, sys, threading
def local(sock):
    a, p = sock.getsockname()[:2]
    if a.startswith('::ffff:'):
        a = a[7:]
    elif ':' in a:
        a = '[' + a + ']'
    return '%s:%d' % (a, p)
def handle(c):
    try:
        c.settimeout(2)
        try:
            buf = b''
            while b'\r\n\r\n' not in buf:
                d = c.recv(4096)
                if not d:
                    break
                buf += d
        except OSError:
            pass
        body = ('hello from %s\n' % local(c)).encode()
        c.sendall(b'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
    except OSError:
        pass
    finally:
        c.close()
def tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(('::', port))
    s.listen(128)
    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    return loop
def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    s.bind(('::', port))
    def loop():
        while True:
            data, anc, _, peer = s.recvmsg(4096, 1024)
            dst = None
            for level, typ, d in anc:
                if level == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO:
                    dst = socket.inet_ntop(socket.AF_INET6, d[:16])
            if dst is None:
                dst = '?'
            elif dst.startswith('::ffff:'):
                dst = dst[7:]
            else:
                dst = '[' + dst + ']'
            s.sendto(('echo %s:%d' % (dst, port)).encode(), peer)
    return loop
loops = []
for spec in sys.argv[1:]:
    kind, port = spec.split(':')
    loops.append((tcp if kind == 'tcp' else udp)(int(port)))
for l in loops:
    threading.Thread(target=l, daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
