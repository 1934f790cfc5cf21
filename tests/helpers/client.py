"""Client for the integration tests (tests/src/client.rs runs it, confined or not).

Each argument is `PROTO|ADDR|PORT` (PROTO: tcp = connect + HTTP/1.0 GET, udp = sendto without
connect, udpconnect = connect then send). Prints one JSON line
`{pid, results: [{op, ok, errno, error, reply}]}`; `reply` is the HTTP body (tcp) or the datagram
(udp).
"""
import json, os, socket, sys
res = []
for op in sys.argv[1:]:
    proto, addr, port = op.split('|')
    port = int(port)
    fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
    r = {'op': op, 'ok': False, 'errno': None, 'error': None, 'reply': None}
    try:
        if proto == 'tcp':
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect((addr, port))
            s.sendall(b'GET / HTTP/1.0\r\n\r\n')
            data = b''
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            r['reply'] = data.split(b'\r\n\r\n', 1)[-1].decode()
        elif proto in ('udp', 'udpconnect'):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(3)
            if proto == 'udp':
                s.sendto(b'ping', (addr, port))
            else:
                s.connect((addr, port))
                s.send(b'ping')
            data, _ = s.recvfrom(4096)
            r['reply'] = data.decode()
        else:
            raise ValueError('bad proto ' + proto)
        s.close()
        r['ok'] = True
    except OSError as e:
        r['errno'] = e.errno
        r['error'] = str(e)
    res.append(r)
print(json.dumps({'pid': os.getpid(), 'results': res}))
sys.stdout.flush()
