"""A confined workload for the integration tests (tests/src/workload.rs drives it).

Requests are JSON objects, one per line on stdin (or one per argv argument: then it answers them
and exits); each gets one JSON line on stdout. Interactive mode prints `"ready"` first.

- `{"op":"resolve","name":N,"port":P}` -> `{ok, addrs, gai_errno, error}` (getaddrinfo,
  AF_INET, SOCK_STREAM: the system resolver, i.e. the host's resolv.conf); `"family":"any"`
  asks AF_UNSPEC (A and AAAA)
- `{"op":"connect","addr":A,"port":P}` -> `{ok, errno, error, reply}` (TCP + HTTP GET)
- `{"op":"resolve_connect","name":N,"port":P}` -> resolve, then connect to the first address
- `{"op":"query","server":S,"port":53,"name":N,"qtype":1,"transport":"udp|udpconnect|tcp"}`
  -> `{ok, rcode, addrs:[[ip, ttl]...], ancount, elapsed, peer, recv_from, error}`: a hand-made
  DNS query; `peer` is getpeername() (connected sockets), `recv_from` the datagram's source.
- `{"op":"race","names":[...],"ips":[...],"port":P}`: for each i: connect(ips[i]) without a
  lookup first (`fresh` counts EPERMs = address not allowed before the lookup), then
  getaddrinfo(names[i]) and connect to its answer at once -> `{n, fresh, eperm, other,
  failures:[...], elapsed}`; optional `"pace": SECS` starts iteration i no earlier than
  i * SECS after the first
- `{"op":"exit"}`: exit (interactive mode)
"""
import errno, json, random, socket, struct, sys, time

def enc(tid, name, qtype):
    q = struct.pack('>HHHHHH', tid, 0x0100, 1, 0, 0, 0)
    for l in name.rstrip('.').split('.'):
        q += bytes([len(l)]) + l.encode()
    return q + b'\0' + struct.pack('>HH', qtype, 1)

def skip(b, i):
    while True:
        l = b[i]
        if l == 0:
            return i + 1
        if l & 0xc0 == 0xc0:
            return i + 2
        i += 1 + l

def parse(b):
    tid, flags, qd, an, ns, ar = struct.unpack('>HHHHHH', b[:12])
    i = 12
    for _ in range(qd):
        i = skip(b, i) + 4
    addrs = []
    for _ in range(an):
        i = skip(b, i)
        t, c, ttl, ln = struct.unpack('>HHIH', b[i:i + 10])
        i += 10
        rd = b[i:i + ln]
        i += ln
        if t == 1 and ln == 4:
            addrs.append([socket.inet_ntop(socket.AF_INET, rd), ttl])
        elif t == 28 and ln == 16:
            addrs.append([socket.inet_ntop(socket.AF_INET6, rd), ttl])
    return tid, flags & 0xf, an, addrs

def addr_of(a):
    return [a[0], a[1]] if a else None

def resolve(name, port, family=socket.AF_INET):
    r = {'ok': False, 'addrs': [], 'gai_errno': None, 'error': None}
    try:
        infos = socket.getaddrinfo(name, port, family, socket.SOCK_STREAM)
        seen = []
        for i in infos:
            if i[4][0] not in seen:
                seen.append(i[4][0])
        r['addrs'] = seen
        r['ok'] = True
    except socket.gaierror as e:
        r['gai_errno'] = e.errno
        r['error'] = str(e)
    return r

def connect(addr, port):
    r = {'ok': False, 'errno': None, 'error': None, 'reply': None}
    fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
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
        r['ok'] = True
    except OSError as e:
        r['errno'] = e.errno
        r['error'] = str(e)
    finally:
        s.close()
    return r

def query(req):
    server, port = req['server'], req.get('port', 53)
    name, qtype, tr = req['name'], req.get('qtype', 1), req.get('transport', 'udp')
    fam = socket.AF_INET6 if ':' in server else socket.AF_INET
    tid = random.randrange(65536)
    q = enc(tid, name, qtype)
    r = {'ok': False, 'rcode': None, 'addrs': [], 'ancount': None, 'elapsed': None, 'peer': None,
         'recv_from': None, 'error': None, 'errno': None}
    t0 = time.monotonic()
    s = socket.socket(fam, socket.SOCK_STREAM if tr == 'tcp' else socket.SOCK_DGRAM)
    try:
        s.settimeout(req.get('timeout', 6))
        if tr == 'udp':
            s.sendto(q, (server, port))
            data, frm = s.recvfrom(4096)
            r['recv_from'] = addr_of(frm)
        elif tr == 'udpconnect':
            s.connect((server, port))
            r['peer'] = addr_of(s.getpeername())
            s.send(q)
            data, frm = s.recvfrom(4096)
            r['recv_from'] = addr_of(frm)
        else:
            s.connect((server, port))
            r['peer'] = addr_of(s.getpeername())
            s.sendall(struct.pack('>H', len(q)) + q)
            buf = b''
            while len(buf) < 2 or len(buf) < 2 + struct.unpack('>H', buf[:2])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError(errno.ECONNRESET, 'connection closed before a full answer')
                buf += chunk
            data = buf[2:2 + struct.unpack('>H', buf[:2])[0]]
        rid, rcode, an, addrs = parse(data)
        if rid != tid:
            raise OSError(errno.EPROTO, 'answer id %d != query id %d' % (rid, tid))
        r.update(ok=True, rcode=rcode, ancount=an, addrs=addrs)
    except OSError as e:
        r['errno'] = e.errno
        r['error'] = str(e)
    finally:
        r['elapsed'] = time.monotonic() - t0
        s.close()
    return r

def race(req):
    names, ips, port = req['names'], req['ips'], req['port']
    out = {'n': len(names), 'fresh': 0, 'eperm': 0, 'other': 0, 'failures': [], 'elapsed': None}
    pace = req.get('pace', 0)
    t0 = time.monotonic()
    for i, name in enumerate(names):
        if pace:
            d = t0 + i * pace - time.monotonic()
            if d > 0:
                time.sleep(d)
        pre = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            pre.settimeout(5)
            pre.connect((ips[i], port))
        except OSError as e:
            if e.errno == errno.EPERM:
                out['fresh'] += 1
        finally:
            pre.close()
        try:
            infos = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)
            addr = infos[0][4][0]
        except socket.gaierror as e:
            out['other'] += 1
            if len(out['failures']) < 20:
                out['failures'].append({'i': i, 'name': name, 'gai_errno': e.errno, 'error': str(e)})
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(5)
            s.connect((addr, port))
        except OSError as e:
            if e.errno == errno.EPERM:
                out['eperm'] += 1
            else:
                out['other'] += 1
            if len(out['failures']) < 20:
                out['failures'].append({'i': i, 'name': name, 'addr': addr, 'errno': e.errno, 'error': str(e)})
        finally:
            s.close()
    out['elapsed'] = time.monotonic() - t0
    return out

def handle(req):
    op = req['op']
    if op == 'resolve':
        fam = socket.AF_UNSPEC if req.get('family') == 'any' else socket.AF_INET
        return resolve(req['name'], req['port'], fam)
    if op == 'connect':
        return connect(req['addr'], req['port'])
    if op == 'resolve_connect':
        r = resolve(req['name'], req['port'])
        r['connect'] = connect(r['addrs'][0], req['port']) if r['ok'] and r['addrs'] else None
        return r
    if op == 'query':
        return query(req)
    if op == 'race':
        return race(req)
    return {'error': 'unknown op ' + op}

def reply(obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()

if len(sys.argv) > 1:
    for a in sys.argv[1:]:
        reply(handle(json.loads(a)))
    sys.exit(0)
reply('ready')
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    req = json.loads(line)
    if req.get('op') == 'exit':
        break
    reply(handle(req))
