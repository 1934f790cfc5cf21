"""A pod's verdict loop for the Kubernetes integration tests (tests/src/kube.rs runs it in a pod's
netns and cgroup).

Arguments: SECONDS then targets `ADDR:PORT:allow|deny`. Connects to every target in turn (TCP,
0.5 s timeout) until SECONDS have passed and prints one JSON line:
`{"rounds": N, "wrong": [..first 20..], "wrong_count": N, "first_eperm": SECS|null,
  "allowed_before_first_eperm": N}`.
A verdict is wrong when an `allow` target fails with EPERM or a `deny` target does not.
`first_eperm` / `allowed_before_first_eperm` (time of, and connects that got through before, the
first EPERM on a deny target) measure how long a new pod ran unenrolled.
"""
import errno, json, socket, sys, time

secs = float(sys.argv[1])
targets = []
for t in sys.argv[2:]:
    addr, port, want = t.rsplit(':', 2)
    targets.append((addr, int(port), want))
t0 = time.monotonic()
rounds = 0
wrong = []
wrong_count = 0
first_eperm = None
through = 0
while True:
    for addr, port, want in targets:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.5)
        eperm = False
        try:
            s.connect((addr, port))
        except OSError as e:
            eperm = e.errno == errno.EPERM
        finally:
            s.close()
        if want == 'deny':
            if eperm and first_eperm is None:
                first_eperm = time.monotonic() - t0
            if not eperm and first_eperm is None:
                through += 1
        if eperm != (want == 'deny'):
            wrong_count += 1
            if len(wrong) < 20:
                wrong.append({'t': round(time.monotonic() - t0, 4), 'target': '%s:%d' % (addr, port), 'want': want})
    rounds += 1
    if time.monotonic() - t0 >= secs:
        break
print(json.dumps({'rounds': rounds, 'wrong': wrong, 'wrong_count': wrong_count, 'first_eperm': first_eperm,
                  'allowed_before_first_eperm': through}))
