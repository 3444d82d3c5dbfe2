"""Socket-level tests of host.http.serve:
    python3 tests/http_server_raw.py PORT [exit]

Talks raw HTTP/1.x to tests/http_server_fixture.lua on 127.0.0.1:PORT
(max_body 1024), for what an HTTP client library would not send:
pipelined requests, malformed requests, oversized ones, clients that go
away. Every socket has a timeout; the last request (/quit) stops the server.
Prints one line per test and exits 1 when any failed. With "exit", it only
leaves requests in flight and asks the server to os.exit() meanwhile.
"""

import json
import socket
import struct
import sys
import time

PORT = int(sys.argv[1])
TIMEOUT = 5.0


def connect():
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


class Conn:
    """A client connection that reads whole responses."""

    def __init__(self):
        self.sock = connect()
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data

    def response(self, head=False):
        """(status, headers with lower-case names, body)"""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert parts[0] == "HTTP/1.1", "bad status line %r" % lines[0]
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        size = 0 if head else int(headers.get("content-length", "0"))
        while len(self.buf) < size:
            self._fill()
        body, self.buf = self.buf[:size], self.buf[size:]
        return int(parts[1]), headers, body

    def closed_by_server(self, wait=3.0):
        """True when the server ends the connection within wait seconds."""
        self.sock.settimeout(wait)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)

    def close(self):
        self.sock.close()


def get(path, extra=""):
    return "GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path, extra)


def echo_of(body):
    return json.loads(body.decode("utf-8"))


def expect_error(request, status):
    """Send request; the server must answer status and close."""
    c = Conn()
    try:
        c.send(request)
    except (BrokenPipeError, ConnectionResetError):
        pass  # it may stop reading early; the reply must still come
    code, headers, _ = c.response()
    assert code == status, "expected %d, got %d" % (status, code)
    assert headers.get("connection") == "close", headers
    assert c.closed_by_server(), "connection left open"
    c.close()


# ---- the tests ----


def test_keep_alive_serves_requests_one_after_the_other():
    c = Conn()
    for i in range(3):
        c.send(get("/echo?n=%d" % i))
        code, headers, body = c.response()
        assert code == 200
        assert "connection" not in headers, headers
        assert echo_of(body)["query"] == "n=%d" % i
    c.close()


def test_pipelined_requests_are_answered_in_order():
    c = Conn()
    c.send(get("/slow?s=0.3") + get("/echo?n=2") + get("/echo?n=3"))
    code, _, body = c.response()
    assert (code, body) == (200, b"slow s=0.3"), body
    code, _, body = c.response()
    assert code == 200 and echo_of(body)["query"] == "n=2"
    code, _, body = c.response()
    assert code == 200 and echo_of(body)["query"] == "n=3"
    c.close()


def test_handler_gets_method_path_query_headers_and_body():
    c = Conn()
    c.send("POST /echo?a=1&b=2 HTTP/1.1\r\nHost: t\r\nX-Mixed-Case: v1 \r\n"
           "x-mixed-case: v2\r\nContent-Length: 5\r\n\r\nhello")
    code, _, body = c.response()
    req = echo_of(body)
    assert code == 200
    assert req["method"] == "POST" and req["path"] == "/echo"
    assert req["query"] == "a=1&b=2" and req["target"] == "/echo?a=1&b=2"
    assert req["headers"]["x-mixed-case"] == "v1, v2", req["headers"]
    assert req["body"] == "hello"
    assert req["peer"].startswith("127.0.0.1:")
    c.close()


def test_chunked_body_is_decoded():
    c = Conn()
    c.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
           "\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    code, _, body = c.response()
    req = echo_of(body)
    assert code == 200 and req["body"] == "hello world", req
    assert "x-trailer" not in req["headers"]
    c.close()


def test_absolute_form_target_gives_path_and_query():
    c = Conn()
    c.send(get("http://example.com/echo?x=1"))
    code, _, body = c.response()
    req = echo_of(body)
    assert code == 200 and req["path"] == "/echo" and req["query"] == "x=1"
    c.close()


def test_request_sent_byte_by_byte_is_parsed():
    c = Conn()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in get("/echo?slow=1"):
        c.send(byte)
        time.sleep(0.002)
    code, _, body = c.response()
    assert code == 200 and echo_of(body)["query"] == "slow=1"
    c.close()


def test_head_reply_has_length_but_no_body():
    c = Conn()
    c.send("HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    code, headers, body = c.response(head=True)
    assert code == 200 and int(headers["content-length"]) > 0 and body == b""
    c.send(get("/echo?after=head"))  # no stray body bytes in between
    code, _, body = c.response()
    assert code == 200 and echo_of(body)["query"] == "after=head"
    c.close()


def test_http10_request_is_answered_and_closed():
    c = Conn()
    c.send("GET /echo HTTP/1.0\r\n\r\n")
    code, headers, _ = c.response()
    assert code == 200 and headers.get("connection") == "close", headers
    assert c.closed_by_server()
    c.close()


def test_http10_keep_alive_is_honoured():
    c = Conn()
    for _ in range(2):
        c.send("GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        code, headers, _ = c.response()
        assert code == 200 and headers.get("connection") == "keep-alive"
    c.close()


def test_connection_close_request_closes_after_reply():
    c = Conn()
    c.send(get("/echo", "Connection: close\r\n") + get("/echo?never=1"))
    code, headers, _ = c.response()
    assert code == 200 and headers.get("connection") == "close"
    assert c.closed_by_server()
    assert b"never" not in c.buf
    c.close()


def test_expect_100_continue_gets_interim_reply():
    c = Conn()
    c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
           "Expect: 100-continue\r\n\r\n")
    code, _, body = c.response()
    assert code == 100 and body == b""
    c.send("data")
    code, _, body = c.response()
    assert code == 200 and echo_of(body)["body"] == "data"
    c.close()


def test_malformed_request_line_gets_400():
    expect_error("THIS IS NOT HTTP\r\n\r\n", 400)


def test_header_without_colon_gets_400():
    expect_error("GET / HTTP/1.1\r\nHost t\r\n\r\n", 400)


def test_content_length_with_chunked_gets_400():
    expect_error("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)


def test_bad_request_after_a_good_one_gets_200_then_400():
    c = Conn()
    c.send(get("/echo?first=1") + "BAD\x01REQUEST\r\n\r\n")
    code, _, _ = c.response()
    assert code == 200
    code, headers, _ = c.response()
    assert code == 400 and headers.get("connection") == "close"
    assert c.closed_by_server()
    c.close()


def test_body_over_max_body_gets_413():
    expect_error("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                 "\r\n" + "x" * 5000, 413)


def test_announced_body_over_max_body_gets_413_before_it_is_sent():
    expect_error("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                 "Expect: 100-continue\r\n\r\n", 413)


def test_chunked_body_over_max_body_gets_413():
    chunk = "400\r\n" + "y" * 1024 + "\r\n"
    expect_error("POST /echo HTTP/1.1\r\nHost: t\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n" + chunk * 2, 413)


def test_body_of_exactly_max_body_is_accepted():
    c = Conn()
    c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n"
           + "z" * 1024)
    code, _, body = c.response()
    assert code == 200 and len(echo_of(body)["body"]) == 1024
    c.close()


def test_many_headers_get_431():
    flood = "".join("X-Flood-%d: v\r\n" % i for i in range(500))
    expect_error(get("/echo", flood), 431)


def test_huge_header_gets_431():
    expect_error(get("/echo", "X-Big: %s\r\n" % ("b" * 100000)), 431)


def test_long_url_gets_414():
    expect_error(get("/" + "u" * 9000), 414)


def test_client_closing_mid_handler_does_not_hurt_the_server():
    c = Conn()
    c.send(get("/slow?s=0.4"))
    time.sleep(0.05)
    c.close()
    c = Conn()  # served while the orphaned handler sleeps
    c.send(get("/echo?during=1"))
    assert c.response()[0] == 200
    time.sleep(0.6)  # the orphaned handler has answered into the void
    c.send(get("/echo?after=1"))
    code, _, body = c.response()
    assert code == 200 and echo_of(body)["query"] == "after=1"
    c.close()


def test_client_reset_mid_handler_does_not_hurt_the_server():
    c = Conn()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                      struct.pack("ii", 1, 0))
    c.send(get("/slow?s=0.3") + get("/echo?pipelined=1"))
    time.sleep(0.05)
    c.close()  # sends a reset
    time.sleep(0.5)
    c = Conn()
    c.send(get("/echo?after=reset"))
    assert c.response()[0] == 200
    c.close()


def test_half_closed_client_still_gets_its_reply():
    c = Conn()
    c.send(get("/slow?s=0.2"))
    c.sock.shutdown(socket.SHUT_WR)
    code, _, body = c.response()
    assert code == 200 and body == b"slow s=0.2"
    assert c.closed_by_server()
    c.close()


def test_many_connections_at_once():
    conns = [Conn() for _ in range(50)]
    for i, c in enumerate(conns):
        c.send(get("/echo?i=%d" % i))
    for i, c in enumerate(conns):
        code, _, body = c.response()
        assert code == 200 and echo_of(body)["query"] == "i=%d" % i
        c.close()


def exit_with_requests_in_flight():
    """/exit while a handler waits, a connection idles and another is
    half-way through a request: the server must still exit cleanly."""
    busy = Conn()
    busy.send(get("/hang"))
    sleeping = Conn()
    sleeping.send(get("/slow?s=5"))
    idle = Conn()
    partial = Conn()
    partial.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n"
                 "\r\nabc")
    time.sleep(0.2)
    quitter = Conn()
    quitter.send(get("/exit"))
    for c in (busy, sleeping, idle, partial, quitter):
        assert c.closed_by_server(), "a connection outlived the server"
        c.close()
    print("ok - exit_with_requests_in_flight")


def main():
    if sys.argv[2:] == ["exit"]:
        exit_with_requests_in_flight()
        return
    tests = [(name, fn) for name, fn in globals().items()
             if name.startswith("test_") and callable(fn)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print("ok - %s" % name)
        except Exception as e:  # noqa: BLE001 - report every failure
            failed += 1
            print("FAIL - %s: %s: %s" % (name, type(e).__name__, e))
    c = Conn()
    c.send(get("/quit"))
    quit_ok = c.response()[0] == 200
    c.close()
    print("%d passed, %d failed" % (len(tests) - failed, failed))
    sys.exit(0 if failed == 0 and quit_ok else 1)


if __name__ == "__main__":
    main()
