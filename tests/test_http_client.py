"""The exporters' own HTTP/1.1 client reads every response shape a collector or a proxy in front of
it may send, however the bytes are split across TCP segments.

A raw loopback server writes each answer in small pieces with pauses between them, so the client
must put the response together from many recv() calls; the same answers in one piece must give the
same result."""
import socket
import threading
import time

import pytest

PARTIAL = b'{"partialSuccess":{"rejectedDataPoints":"3","errorMessage":"bad ts"}}'
ANSWERS = {
    "length": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
               200, b"{}", "ok"),
    "partial": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(PARTIAL), PARTIAL), 200, PARTIAL,
                "partial"),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"4;ext=1\r\n{\"pa\r\n11\r\nrtialSuccess\":{}}\r\n0\r\nX-Trailer: yes\r\n\r\n",
                200, b'{"partialSuccess":{}}', "ok"),
    "bare_lf": (b"HTTP/1.1 503 Service Unavailable\nRetry-After: 7\nContent-Length: 4\n\nbusy",
                503, b"busy", "retry"),
    "no_content": (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", "ok"),
    "until_close": (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nbad payload", 400,
                    b"bad payload", "reject"),
}


def serve(answer, pieces, closes):
    """Accept one connection, answer each request with `answer` cut into `pieces` writes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def run():
        conn, _ = server.accept()
        with conn:
            for _ in range(2):
                if not conn.recv(65536):
                    return
                step = max(1, len(answer) // pieces)
                for start in range(0, len(answer), step):
                    conn.sendall(answer[start:start + step])
                    time.sleep(0.005)
                if closes:
                    return
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize("pieces", [1, 7, 1000])
@pytest.mark.parametrize("shape", sorted(ANSWERS))
def test_every_response_shape_in_any_number_of_pieces(macmon_mod, shape, pieces):
    answer, status, body, kind = ANSWERS[shape]
    closes = shape == "until_close"
    server, thread = serve(answer, pieces, closes)
    client = macmon_mod.OtlpHttpClient(f"http://127.0.0.1:{server.getsockname()[1]}/v1/metrics", {}, 5, "none", None)
    try:
        client.deadline = time.monotonic() + 5
        client.connect()
        client.sock.sendall(b"POST / HTTP/1.1\r\n\r\n")
        got_status, headers, got_body = client.read_response()
        assert (got_status, got_body) == (status, body)
        assert client.pending == b""  # nothing of this response is left for the next one
        assert macmon_mod.classify_response(got_status, headers, got_body).kind == kind
        if shape == "bare_lf":
            assert headers["retry-after"] == "7"
        if not closes:  # the same kept-alive connection carries the next request and answer
            client.sock.sendall(b"POST / HTTP/1.1\r\n\r\n")
            assert client.read_response()[::2] == (status, body)
    finally:
        client.close()
        server.close()
        thread.join(10)


def test_a_post_reuses_the_connection_and_reads_partial_success(macmon_mod):
    answer = ANSWERS["partial"][0]
    server, thread = serve(answer, 3, closes=False)
    client = macmon_mod.OtlpHttpClient(f"http://127.0.0.1:{server.getsockname()[1]}/v1/metrics", {}, 5, "none", None)
    try:
        first = client.post('{"resourceMetrics":[]}')
        sock = client.sock
        second = client.post('{"resourceMetrics":[]}')
        assert client.sock is sock
        assert (first.kind, first.rejected, first.detail) == ("partial", 3, "bad ts")
        assert (second.kind, second.rejected) == ("partial", 3)
    finally:
        client.close()
        server.close()
        thread.join(10)


def test_headers_without_end_are_refused_not_buffered_forever(macmon_mod):
    answer = b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"a" * 70000 + b"\r\n\r\n"
    server, thread = serve(answer, 1, closes=True)
    client = macmon_mod.OtlpHttpClient(f"http://127.0.0.1:{server.getsockname()[1]}/v1/metrics", {}, 5, "none", None)
    try:
        outcome = client.post('{"resourceMetrics":[]}')
        assert outcome.kind == "retry" and "longer than" in outcome.detail
    finally:
        client.close()
        server.close()
        thread.join(10)


def serve_script(script):
    """Accept connections one after another; for each request, run script(conn, request number)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    count = [0]

    def run():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    count[0] += 1
                    if script(conn, count[0]) == "close":
                        break

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server, thread, count


def client_for(mod, server, timeout_s=5):
    return mod.OtlpHttpClient(f"http://127.0.0.1:{server.getsockname()[1]}/v1/metrics", {}, timeout_s, "none", None)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


def test_interim_answers_are_read_past_to_the_final_one(macmon_mod):
    """D10: 100 Continue and 103 Early Hints come before the real answer; the connection stays in step."""
    def script(conn, n):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        time.sleep(0.02)
        conn.sendall(OK if n == 1 else b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad")
    server, thread, _count = serve_script(script)
    client = client_for(macmon_mod, server)
    try:
        first = client.post("{}")
        second = client.post("{}")
        assert (first.kind, first.http_status) == ("ok", 200)
        assert (second.kind, second.http_status) == ("reject", 400) and "bad" in second.detail
    finally:
        client.close()
        server.close()


def test_an_answer_written_to_an_idle_connection_is_never_taken_for_the_next(macmon_mod):
    """D11: a server that sends a stale 408 on an idle kept-alive connection (and closes it): the
    client must not read that 408 as the answer to its next request."""
    def script(conn, n):
        conn.sendall(OK)
        time.sleep(0.05)
        conn.sendall(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        return "close"
    server, thread, count = serve_script(script)
    client = client_for(macmon_mod, server)
    try:
        assert client.post("{}").kind == "ok"
        time.sleep(0.3)  # idle: the 408 arrives meanwhile
        second = client.post("{}")
        assert (second.kind, second.http_status) == ("ok", 200) and count[0] == 2
    finally:
        client.close()
        server.close()


def test_the_timeout_bounds_the_whole_request_not_each_read(macmon_mod):
    """D12: a collector that trickles a byte every 0.3 s cannot hold a request past --timeout."""
    answer = OK

    def script(conn, n):
        try:
            for byte in answer:
                conn.sendall(bytes([byte]))
                time.sleep(0.3)
        except OSError:
            pass
        return "close"
    server, thread, _count = serve_script(script)
    client = client_for(macmon_mod, server, timeout_s=1.0)
    try:
        started = time.monotonic()
        outcome = client.post("{}")
        took = time.monotonic() - started
        assert (outcome.kind, outcome.error_type) == ("retry", "timeout")
        assert outcome.http_status is None and outcome.unanswered
        assert took < 2.0, took  # a fresh timeout per recv() would wait for all 41 bytes: 12 s
    finally:
        client.close()
        server.close()


def test_a_slow_answer_leaves_the_next_request_its_whole_timeout(macmon_mod):
    """The socket keeps its timeout between reads of one request; the next request on the same
    kept-alive connection must get a fresh one, not what the last request had left (0.4 s here)."""
    def script(conn, n):
        if n == 1:  # the second read of this answer starts 0.6 s into the request
            time.sleep(0.6)
            conn.sendall(OK[:10])
            time.sleep(0.05)
            conn.sendall(OK[10:])
        else:
            time.sleep(0.7)
            conn.sendall(OK)
    server, thread, count = serve_script(script)
    client = client_for(macmon_mod, server, timeout_s=1.0)
    try:
        assert client.post("{}").kind == "ok"
        second = client.post("{}")
        assert (second.kind, second.http_status) == ("ok", 200) and count[0] == 2
    finally:
        client.close()
        server.close()


def test_an_answer_that_came_in_time_is_read_when_the_exporter_ran_late(macmon_mod):
    """A loaded host may not run the sender for a while after its request went out: an answer
    already there is taken by one last read, not thrown away as a timeout (the request would be
    sent again and stored twice). Nothing more than that: an answer still missing is a timeout."""
    def script(conn, n):
        if n == 1:
            conn.sendall(OK)  # at once
        elif n == 2:
            conn.sendall(OK[:20])  # half of it, the rest never comes
            time.sleep(3)
    server, thread, count = serve_script(script)
    client = client_for(macmon_mod, server, timeout_s=0.5)
    read_response = client.read_response

    def late(*args, **kwargs):
        time.sleep(0.8)  # the sender was not run until past the deadline
        return read_response(*args, **kwargs)
    client.read_response = late
    try:
        first = client.post("{}")
        assert (first.kind, first.http_status) == ("ok", 200) and count[0] == 1
        second = client.post("{}")
        assert (second.kind, second.error_type) == ("retry", "timeout") and second.unanswered
    finally:
        client.close()
        server.close()
