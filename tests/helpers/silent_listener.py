"""A TCP listener that accepts and never sends a byte (a TLS handshake to it hangs until the
client gives up).

Arguments: `ADDR PORT`. Prints `ready` once listening. tests/src/servers.rs starts it inside a
netns.
"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(128)
held = []
print('ready', flush=True)
while True:
    c, _ = s.accept()
    held.append(c)
