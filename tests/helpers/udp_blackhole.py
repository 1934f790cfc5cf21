"""A UDP "resolver" that reads queries and never answers (an upstream that times out).

Arguments: `ADDR PORT`. Prints `ready` once bound. tests/src/servers.rs starts it inside a netns.
"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
while True:
    s.recvfrom(4096)
