"""What the loopback stand-ins share: a threaded HTTP server running in the background, a handler
that serves a page in the Prometheus text format, and the command line's wait for Ctrl-C.
Standard library only: `make demo` runs them with no install."""
import http.server
import sys
import threading
import time


def start_server(handler, host="127.0.0.1", port=0, tls_context=None):
    """A ThreadingHTTPServer for `handler`, serving from a daemon thread; port 0 picks a free one.
    With an ssl.SSLContext it serves https."""
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def prometheus_page_handler(page, up=lambda: True):
    """A handler that answers any GET with page() as text/plain; version=0.0.4, or 503 while up()
    is false (an endpoint that went away)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            data = page().encode() if up() else b""
            self.send_response(200 if up() else 503)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def wait_for_ctrl_c(message):
    """For a stand-in run from the command line: say where it serves, then serve until Ctrl-C."""
    print(message, file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
