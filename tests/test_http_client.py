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
        client.connect(5)
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
