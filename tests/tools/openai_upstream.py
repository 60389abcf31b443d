#!/usr/bin/env python3
"""A stand-in OpenAI-compatible model server on loopback, with known token timing.

It answers POST /v1/chat/completions the way llama-server, EXO and vLLM do: a JSON completion,
or (with "stream": true) server-sent events, one `chat.completion.chunk` per token, a last chunk
with finish_reason "stop", and the `usage` chunk when the request asks for it with
`stream_options.include_usage` (LiteLLM always does), then `data: [DONE]`. GET /v1/models lists
the one model it serves. Every answer carries the model id the request named.

Timing: the first token after `ttft_s`, then one every `token_interval_s`; `output_tokens` tokens
per answer (or the request's max_tokens when smaller); usage reports `prompt_tokens` as the
request's word count.

    python3 tests/tools/openai_upstream.py --port 8001 --tokens 50 --ttft 0.2 --interval 0.02
"""
import argparse
import http.server
import json
import sys
import threading
import time

from standin_http import start_server, wait_for_ctrl_c


class Upstream:
    def __init__(self, output_tokens=10, ttft_s=0.0, token_interval_s=0.0, host="127.0.0.1", port=0,
                 include_usage=True):
        self.output_tokens = output_tokens
        self.ttft_s = ttft_s
        self.token_interval_s = token_interval_s
        self.include_usage = include_usage  # False: a server that never reports usage
        self.requests = []  # the decoded request bodies, in arrival order
        self.lock = threading.Lock()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    upstream.send_json(self, {"object": "list", "data": [{"id": "stand-in", "object": "model"}]})
                else:
                    upstream.send_json(self, {"error": {"message": "not found"}}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with upstream.lock:
                    upstream.requests.append(body)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    upstream.send_json(self, {"error": {"message": "not found"}}, 404)
                elif body.get("stream"):
                    upstream.stream(self, body)
                else:
                    upstream.complete(self, body)

        self.server = start_server(Handler, host, port)
        self.port = self.server.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    # ---- answers

    def usage(self, body, completion_tokens):
        prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        prompt_tokens = max(1, len(prompt.split()))
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def token_count(self, body):
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        return min(self.output_tokens, int(limit)) if limit else self.output_tokens

    @staticmethod
    def send_json(handler, document, status=200):
        data = json.dumps(document).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def complete(self, handler, body):
        tokens = self.token_count(body)
        time.sleep(self.ttft_s + self.token_interval_s * max(0, tokens - 1))
        document = {"id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": " ".join(f"w{i}" for i in range(tokens))}}]}
        if self.include_usage:
            document["usage"] = self.usage(body, tokens)
        self.send_json(handler, document)

    def stream(self, handler, body):
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def event(data):
            payload = f"data: {data}\n\n".encode()
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            handler.wfile.flush()

        def chunk(delta, finish=None):
            return json.dumps({"id": "chatcmpl-standin", "object": "chat.completion.chunk",
                               "created": int(time.time()), "model": body.get("model"),
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        tokens = self.token_count(body)
        begun = time.monotonic()
        try:
            for i in range(tokens):
                # on a fixed schedule (first token at ttft, then one every interval): no drift
                time.sleep(max(0.0, begun + self.ttft_s + i * self.token_interval_s - time.monotonic()))
                # a different word each time: LiteLLM ends a stream that repeats one chunk 100 times
                event(chunk({"role": "assistant", "content": f"w{i} "} if i == 0 else {"content": f"w{i} "}))
            event(chunk({}, "stop"))
            wants_usage = (body.get("stream_options") or {}).get("include_usage")
            if wants_usage and self.include_usage:
                event(json.dumps({"id": "chatcmpl-standin", "object": "chat.completion.chunk",
                                  "created": int(time.time()), "model": body.get("model"), "choices": [],
                                  "usage": self.usage(body, tokens)}))
            event("[DONE]")
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:
            pass  # the client went away mid-stream


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tokens", type=int, default=10, help="output tokens per answer")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds to the first token")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between tokens")
    args = parser.parse_args()
    upstream = Upstream(args.tokens, args.ttft, args.interval, port=args.port)
    return wait_for_ctrl_c(f"serving {upstream.url}/chat/completions (Ctrl-C to stop)")


if __name__ == "__main__":
    sys.exit(main())
