"""The ceiling for any proxy served by waitress: hand-written HTTP, no urllib3.

waitress + a round-robin forwarder that writes the request line itself on a
kept-alive socket per worker thread and reads the answer by Content-Length.
No parsing library, no pool objects, no settings, no error handling, GET
only, whole answers in memory: the least Python a waitress app can run per
proxied request. What it reaches against HAProxy is what waitress's thread
hand-offs allow; the bare loop and zope_lb sit below it by what urllib3 and
http.client cost. Information only, never a target, never a product.

Run:  python benchmarks/ceiling_loop.py 127.0.0.1:8081 127.0.0.1:8082 --maxconn 8
"""

import itertools
import socket
import threading

from bare_loop import arguments, serve


def make_app(backends: list[str], maxconn: int):
    addrs = [(h, int(p)) for h, p in (b.rsplit(":", 1) for b in backends)]
    turn = itertools.cycle(range(len(addrs)))
    slots = [threading.BoundedSemaphore(maxconn) for _ in addrs]
    local = threading.local()

    def connection(i: int) -> socket.socket:
        socks = local.__dict__.setdefault("socks", {})
        if i not in socks:
            socks[i] = socket.create_connection(addrs[i], timeout=30)
            socks[i].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return socks[i]

    def app(environ, start_response):
        i = next(turn)
        with slots[i]:
            sock = connection(i)
            sock.sendall(
                b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                % (environ["REQUEST_URI"].encode("latin-1"), environ["HTTP_HOST"].encode())
            )
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
            length = int(next(v for k, v in headers if k.lower() == "content-length"))
            while len(body) < length:
                body += sock.recv(65536)
        start_response(lines[0].split(" ", 1)[1], headers)
        return [body]

    return app


if __name__ == "__main__":
    ap = arguments()
    ap.add_argument("--maxconn", type=int, default=16, help="requests at a time per backend")
    args = ap.parse_args()
    serve(make_app(args.backends, args.maxconn), args)
