# The confined command of the L7 proxy tests (tests/src/proxy.rs). One argument, a JSON spec
# {"admin": A, "ops": [OP...], "requests": N, "events": M}:
# - {"kind": "curl", "args": [...], "rss": bool}: runs `curl ARGS`; captures rc, stdout, stderr,
#   wall `elapsed` (s); with `rss`, samples the parent's (the agent's) VmRSS every 20 ms while
#   curl runs: rss_before_kib, rss_max_kib, rss_samples;
# - {"kind": "peer", "addr": A, "port": P, "host": H, "path": Q}: a python TCP client: connect,
#   peer = getpeername(), sock = getsockname(), one HTTP/1.1 GET (Connection: close),
#   response = everything read to EOF;
# - {"kind": "raw", "addr": A, "port": P, "send": TEXT, "bind": [ADDR, PORT]?}: connect (from
#   `bind` if given, SO_REUSEADDR), send TEXT, response = everything read to EOF or 5 s of
#   silence; error = the exception text if the connection failed or was reset;
# - {"kind": "cmd", "argv": [...]}: runs argv; captures rc, stdout, stderr.
# Then polls /metrics and /debug/events until the istio_requests_total samples add up to at
# least `requests`, at least `events` events are listed, and two scrapes 200 ms apart are
# identical (<= 15 s), and prints {ppid, results, metrics, events} as one JSON line.
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

spec = json.loads(sys.argv[1])
admin = spec['admin']
ppid = os.getppid()
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(path):
    with opener.open('http://%s%s' % (admin, path), timeout=10) as r:
        return r.read().decode()


def rss(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def curl(op):
    r = {}
    if op.get('rss'):
        r['rss_before_kib'] = rss(ppid)
    t0 = time.monotonic()
    p = subprocess.Popen(['curl'] + op['args'], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if op.get('rss'):
        samples = []
        while p.poll() is None:
            v = rss(ppid)
            if v is not None:
                samples.append(v)
            time.sleep(0.02)
        r['rss_samples'] = len(samples)
        r['rss_max_kib'] = max(samples) if samples else None
    out, err = p.communicate(timeout=120)
    r.update(rc=p.returncode, stdout=out.decode(errors='replace'), stderr=err.decode(errors='replace'),
             elapsed=time.monotonic() - t0)
    return r


def connect(op):
    s = socket.socket(socket.AF_INET6 if ':' in op['addr'] else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(15)
    if op.get('bind'):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((op['bind'][0], op['bind'][1]))
    s.connect((op['addr'], op['port']))
    return s


def read_all(s, quiet=None):
    if quiet:
        s.settimeout(quiet)
    data = b''
    while True:
        try:
            c = s.recv(65536)
        except socket.timeout:
            break
        if not c:
            break
        data += c
    return data


def peer(op):
    s = connect(op)
    r = {'peer': list(s.getpeername()[:2]), 'sock': list(s.getsockname()[:2])}
    s.sendall(('GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' % (op['path'], op['host'])).encode())
    r['response'] = read_all(s).decode(errors='replace')
    s.close()
    return r


def raw(op):
    r = {'response': '', 'error': None}
    try:
        s = connect(op)
        r['sock'] = list(s.getsockname()[:2])
        s.sendall(op['send'].encode())
        r['response'] = read_all(s, quiet=5).decode(errors='replace')
        s.close()
    except OSError as e:
        r['error'] = str(e)
    return r


def cmd(op):
    p = subprocess.run(op['argv'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    return {'rc': p.returncode, 'stdout': p.stdout.decode(errors='replace'),
            'stderr': p.stderr.decode(errors='replace')}


KINDS = {'curl': curl, 'peer': peer, 'raw': raw, 'cmd': cmd}
res = [KINDS[op['kind']](op) for op in spec['ops']]


def n_requests(m):
    n = 0
    for line in m.splitlines():
        if line.startswith('istio_requests_total{'):
            n += float(line.rsplit(' ', 1)[1])
    return n


def n_events(ev):
    return len([line for line in ev.splitlines() if line.strip()])


deadline = time.monotonic() + 15
prev = None
while True:
    m = get('/metrics')
    ev = get('/debug/events')
    if (m, ev) == prev and n_requests(m) >= spec.get('requests', 0) and n_events(ev) >= spec.get('events', 0):
        break
    if time.monotonic() > deadline:
        break
    prev = (m, ev)
    time.sleep(0.2)
print(json.dumps({'ppid': ppid, 'results': res, 'metrics': m, 'events': ev}), flush=True)
