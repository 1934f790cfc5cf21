"""Known traffic for the metrics tests.

`traffic.py echo ADDR PORT`: a UDP echo bound to exactly ADDR (so echoes leave from it); prints
`ready`.

`traffic.py run SPEC`: runs the ops of the JSON SPEC `{"ops": [OP...]}` in order and prints one
JSON line `{"results": [...]}`:
- `{"kind": "tcp", "addr": A, "port": P, "count": N, "payload": M}`: N times connect, send exactly
  M bytes (an HTTP/1.0 request padded with a header), read the reply to EOF, close;
- `{"kind": "udp", "addr": A, "port": P, "count": K, "size": L}`: K datagrams of L bytes on one
  unconnected socket, each followed by recvfrom() of the echo;
- `{"kind": "curl", "args": [...]}`: runs curl with these arguments.
Each yields `{ok, errors: {errno: count}, sent, received}` (curl: `{status, stdout, stderr}`).
"""
import json
import socket
import subprocess
import sys


def fam(addr):
    return socket.AF_INET6 if ':' in addr else socket.AF_INET


def err(r, e):
    k = str(e.errno)
    r['errors'][k] = r['errors'].get(k, 0) + 1


def tcp(op):
    r = {'ok': 0, 'errors': {}, 'sent': 0, 'received': 0}
    head, tail = b'GET / HTTP/1.0\r\nX-Pad: ', b'\r\n\r\n'
    payload = head + b'a' * max(0, op.get('payload', 0) - len(head) - len(tail)) + tail
    for _ in range(op['count']):
        s = socket.socket(fam(op['addr']), socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect((op['addr'], op['port']))
            s.sendall(payload)
            r['sent'] += len(payload)
            while True:
                c = s.recv(65536)
                if not c:
                    break
                r['received'] += len(c)
            r['ok'] += 1
        except OSError as e:
            err(r, e)
        finally:
            s.close()
    return r


def udp(op):
    r = {'ok': 0, 'errors': {}, 'sent': 0, 'received': 0}
    s = socket.socket(fam(op['addr']), socket.SOCK_DGRAM)
    s.settimeout(3)
    for _ in range(op['count']):
        try:
            s.sendto(b'u' * op['size'], (op['addr'], op['port']))
            r['sent'] += op['size']
            d, _ = s.recvfrom(65536)
            r['received'] += len(d)
            r['ok'] += 1
        except OSError as e:
            err(r, e)
    s.close()
    return r


def curl(op):
    p = subprocess.run(['curl'] + op['args'], capture_output=True, text=True, timeout=60)
    return {'status': p.returncode, 'stdout': p.stdout, 'stderr': p.stderr}


def echo(addr, port):
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.bind((addr, port))
    print('ready', flush=True)
    while True:
        d, peer = s.recvfrom(65536)
        s.sendto(d[:32], peer)


if __name__ == '__main__':
    if sys.argv[1] == 'echo':
        echo(sys.argv[2], int(sys.argv[3]))
    else:
        spec = json.loads(sys.argv[2])
        kinds = {'tcp': tcp, 'udp': udp, 'curl': curl}
        print(json.dumps({'results': [kinds[op['kind']](op) for op in spec['ops']]}), flush=True)
