"""A loopback HTTP server for tests/http_client_raw.lua:
    python3 tests/http_client_raw.py PORTFILE [CERT KEY]

Listens on 127.0.0.1 (any free port, written to PORTFILE) and answers what
host.http.serve cannot send: chunked and close-delimited bodies, repeated
headers, a connection dropped mid-body, an endless body. With CERT and KEY
it also serves the same routes over TLS on a second port (PORTFILE then
holds "PORT TLSPORT"). GET /quit stops it.
"""

import http.server
import os
import ssl
import sys
import threading
import urllib.parse

CHUNK = b"z" * 65536
ENDLESS_CAP = 1 << 30  # stop anyway after 1 GiB


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def arg(self, name, default):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        return int(query.get(name, [default])[0])

    def write_chunked(self, total):
        sent = 0
        while total is None or sent < total:
            part = CHUNK if total is None else CHUNK[: min(len(CHUNK), total - sent)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            sent += len(part)
            if sent >= ENDLESS_CAP:
                break
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        try:
            self.route(path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: expected for the too_large cases

    def route(self, path):
        if path == "/chunked" or path == "/endless":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.write_chunked(None if path == "/endless" else self.arg("n", 0))
        elif path == "/close-delimited":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            left = self.arg("n", 0)
            while left > 0:
                part = CHUNK[: min(len(CHUNK), left)]
                self.wfile.write(part)
                left -= len(part)
            self.close_connection = True
        elif path == "/repeated":
            self.send_response(200)
            self.send_header("Set-Cookie", "a=1")
            self.send_header("X-Spaced", "  padded value  ")
            self.send_header("Set-Cookie", "b=2")
            self.send_header("Set-Cookie", "c=3")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        elif path == "/drop":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"only a little")
            self.wfile.flush()
            self.close_connection = True
        elif path == "/quit":
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"bye")
            threading.Thread(target=self.server.shutdown).start()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


def tls_server(cert, key):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ports = [str(server.server_address[1])]
    if len(sys.argv) > 3:
        ports.append(str(tls_server(sys.argv[2], sys.argv[3]).server_address[1]))
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(" ".join(ports))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
