"""A DNS upstream that records what it receives: `dns_capture.py ADDR PORT LOG A_ADDR AAAA_ADDR`.

Every UDP query is appended to LOG as one hex line (the exact bytes that arrived), then answered:
the question section copied, one A (A_ADDR) or AAAA (AAAA_ADDR) record per question of that
type (TTL 30), NOERROR. Prints `ready` once bound.
"""
import socket, struct, sys

addr, port, log, a_addr, aaaa_addr = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
a_bytes = socket.inet_pton(socket.AF_INET, a_addr)
aaaa_bytes = socket.inet_pton(socket.AF_INET6, aaaa_addr)

def skip_name(b, i):
    while True:
        n = b[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n

def answer(q):
    tid, flags, qd = struct.unpack('>HHH', q[:6])
    i = 12
    questions = []
    for _ in range(qd):
        start = i
        i = skip_name(q, i)
        qtype, qclass = struct.unpack('>HH', q[i:i + 4])
        i += 4
        questions.append((start, qtype, qclass))
    qsec = q[12:i]
    answers = b''
    count = 0
    for start, qtype, qclass in questions:
        if qtype == 1:
            rd = a_bytes
        elif qtype == 28:
            rd = aaaa_bytes
        else:
            continue
        answers += struct.pack('>HHHIH', 0xC000 | start, qtype, 1, 30, len(rd)) + rd
        count += 1
    rflags = 0x8000 | (flags & 0x7900) | 0x0080
    return struct.pack('>HHHHHH', tid, rflags, qd, count, 0, 0) + qsec + answers

family = socket.AF_INET6 if ':' in addr else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((addr, port))
print('ready', flush=True)
while True:
    q, peer = s.recvfrom(65535)
    with open(log, 'a') as f:
        f.write(q.hex() + '\n')
    try:
        s.sendto(answer(q), peer)
    except Exception as e:  # a malformed query: no answer
        sys.stderr.write('dns_capture: %s\n' % e)
