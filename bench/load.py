"""One load-generating client: a keep-alive connection sending the same request in a loop.

    python bench/load.py PORT BODY_FILE START_AT END_AT

Waits until the wall-clock time START_AT, then sends ``POST /invocations`` with the
body in BODY_FILE (text/csv) over one HTTP/1.1 connection until END_AT, and prints
``{"requests": n, "errors": e}``. Only the standard library and raw sockets: the
client's own CPU cost per request is a few tens of microseconds, so on a 2-core
machine the server, not the clients, is what is measured (http.client costs about
five times as much per request).
"""

from __future__ import annotations

import json
import socket
import sys
import time


def _response(sock: socket.socket, pending: bytearray) -> tuple[int, bytearray]:
    """Read one response (status, leftover bytes); the server always sends Content-Length."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        body += chunk
    return status, body[length:]


def main(argv: list[str]) -> int:
    port, body_file, start_at, end_at = int(argv[0]), argv[1], float(argv[2]), float(argv[3])
    with open(body_file, "rb") as fh:
        body = fh.read()
    request = (b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
               b"Accept: application/json\r\nContent-Length: " + str(len(body)).encode() +
               b"\r\n\r\n" + body)
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    time.sleep(max(0.0, start_at - time.time()))
    done = errors = 0
    pending = bytearray()
    while time.time() < end_at:
        sock.sendall(request)
        status, pending = _response(sock, pending)
        done += 1
        errors += status != 200
    sock.close()
    print(json.dumps({"requests": done, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
