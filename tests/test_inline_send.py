"""The sampling thread's inline send: while the sender thread is parked on a healthy connection,
the sampling thread sends itself and hands every unusual case back to the sender thread.

The pieces (buffer, sender, client) run in the test's own thread, the sender's steps called one by
one, against the loopback receiver or a scripted raw collector; each case checks that every sample
is delivered or kept for a retry, never lost, and sent once unless the collector closed the
connection without answering."""
import json
import socket
import threading
import time

import pytest
from conftest import start_macmon_exporter

T0 = 1_780_000_000_000_000_000


def sample(mod, i):
    time_ns = T0 + i * 1_000_000_000
    return mod.Sample(time_ns, [("mac.power.total", mod.encode_point(time_ns, 10.0 + i))])


@pytest.fixture
def make_sender(macmon_mod):
    """Builds sender, buffer and stats for a collector URL; closes their connections afterwards."""
    clients = []

    def make(url, wait_s=0.3):
        sender, buffer, stats = sender_parts(macmon_mod, url, wait_s)
        clients.append(sender.client)
        return sender, buffer, stats

    yield make
    for client in clients:
        client.close()


def sender_parts(mod, url, wait_s):
    stats = mod.Stats(T0)
    buffer = mod.SampleBuffer(100, stats)
    client = mod.OtlpHttpClient(url + "/v1/metrics", {}, 5, "none", None)
    table = mod.MetricTable(mod.SOURCE_METRICS + mod.SELF_METRICS)
    sender = mod.Sender(client, buffer, stats, table, mod.encode_attributes([("service.name", "t")]), 10,
                        inline_wait_s=wait_s)
    return sender, buffer, stats


def prime(mod, sender, buffer):
    """First sample through the sender thread's own path: it connects, delivers and parks."""
    buffer.add(sample(mod, 0))
    assert sender.run_once()
    assert buffer.parked and not len(buffer)


def test_parked_sender_lets_the_sampling_thread_send(macmon_mod, receiver, make_sender):
    sender, buffer, stats = make_sender(receiver.url)
    prime(macmon_mod, sender, buffer)
    sock = sender.client.sock
    for i in range(1, 4):
        buffer.add(sample(macmon_mod, i))
        buffer.add(sample(macmon_mod, i + 10))
        sender.send_inline()
        assert not len(buffer) and buffer.parked
    assert sender.client.sock is sock  # one kept-alive connection throughout
    values = sorted(p.value for p in receiver.series("mac.power.total"))
    assert values == [10.0, 11.0, 12.0, 13.0, 21.0, 22.0, 23.0]
    assert len(receiver.requests) == 4  # the two samples of each round went in one request
    assert stats.samples_delivered == 7


def test_not_parked_means_no_inline_send(macmon_mod, receiver, make_sender):
    sender, buffer, _stats = make_sender(receiver.url)
    buffer.add(sample(macmon_mod, 1))
    sender.send_inline()  # the sender has not connected yet, so it is not parked
    assert len(buffer) == 1 and not receiver.requests


@pytest.mark.parametrize("mode,kept", [("503", True), ("429", True), ("413", False)])
def test_refusals_are_handed_to_the_sender_thread(macmon_mod, receiver, make_sender, mode, kept):
    sender, buffer, stats = make_sender(receiver.url)
    prime(macmon_mod, sender, buffer)
    receiver.mode = mode
    receiver.retry_after = 0
    buffer.add(sample(macmon_mod, 1))
    sender.send_inline()
    assert not buffer.parked  # handed back: the sender thread acts on the answer
    assert buffer.handed is not None and buffer.handed[0][0].time_ns == T0 + 1_000_000_000
    assert sender.run_once()
    assert len(receiver.requests) == 2  # acted on the answer it was handed: no second request
    assert len(buffer) == (1 if kept else 0)
    assert stats.send_errors.get(mode, 0) == (1 if kept else 0)
    assert sum(stats.samples_dropped.values()) == (0 if kept else 1)
    if kept:  # the collector recovers: the sender delivers the kept sample, then parks again
        receiver.mode = "accept"
        assert sender.run_once()
        assert not len(buffer) and buffer.parked
        assert [p.value for p in receiver.series("mac.power.total")] == [10.0, 11.0]


def test_a_rejected_sample_is_dropped_inline_and_the_sender_stays_parked(macmon_mod, receiver, make_sender):
    sender, buffer, stats = make_sender(receiver.url)
    prime(macmon_mod, sender, buffer)
    receiver.mode = "400"  # not retryable: nothing for the sender thread to do
    buffer.add(sample(macmon_mod, 1))
    sender.send_inline()
    assert buffer.parked and buffer.handed is None and not len(buffer)
    assert stats.samples_dropped == {"rejected": 1} and stats.send_errors == {"400": 1}


class ScriptedCollector:
    """A raw HTTP/1.1 collector on loopback: it answers the n-th request with answers[n] after
    delays[n] seconds (None: close the connection without a word), and counts the requests."""

    def __init__(self, answers, delays):
        self.answers, self.delays = answers, delays
        self.bodies = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while len(self.bodies) < len(self.answers):
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self.serve(conn)

    def serve(self, conn):
        data = b""
        while len(self.bodies) < len(self.answers):
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(data) < length:
                data += conn.recv(65536)
            self.bodies.append(json.loads(data[:length]))
            data = data[length:]
            n = len(self.bodies) - 1
            time.sleep(self.delays[n])
            if self.answers[n] is None:
                return  # close the connection: the client must open a new one
            conn.sendall(self.answers[n])

    def times(self):
        return [int(m["gauge"]["dataPoints"][0]["timeUnixNano"])
                for body in self.bodies
                for m in body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"] if m["name"] == "mac.power.total"]

    def close(self):
        self.server.close()
        self.thread.join(10)


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{"partialSuccess":{}}'
CHUNKED = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n'


@pytest.mark.parametrize("case", ["slow", "chunked", "closed_idle"])
def test_unusual_answers_are_finished_by_the_sender_thread_exactly_once(macmon_mod, make_sender, case):
    answers = {"slow": [OK, OK, OK], "chunked": [OK, CHUNKED, OK], "closed_idle": [OK, None, OK, OK]}[case]
    delays = {"slow": [0, 0.8, 0], "chunked": [0, 0, 0], "closed_idle": [0, 0, 0, 0]}[case]
    collector = ScriptedCollector(answers, delays)
    sender, buffer, stats = make_sender(collector.url, wait_s=0.3)
    try:
        prime(macmon_mod, sender, buffer)
        buffer.add(sample(macmon_mod, 1))
        started = time.monotonic()
        sender.send_inline()
        held = time.monotonic() - started
        assert held < 0.3 + 0.5  # the sampling thread is never held longer than inline_wait_s (+ slack)
        assert buffer.handed is not None
        _batch, stage, outcome = buffer.handed
        if case == "closed_idle":  # the answer was the connection ending: the sender sends again
            assert (stage, outcome.status) == ("answered", "connection_reset")
        else:  # the answer is still to come (slow) or to be read in pieces (chunked)
            assert (stage, outcome) == ("sent", None)
        assert sender.run_once()
        assert not len(buffer) and stats.samples_delivered == 2 and not stats.samples_dropped
        buffer.add(sample(macmon_mod, 2))  # parked again: the next sample goes inline
        assert buffer.parked
        sender.send_inline()
        assert not len(buffer)
        expected = [T0, T0 + 1_000_000_000, T0 + 2_000_000_000]
        if case == "closed_idle":  # the collector read the request but closed without an answer,
            # so the sample was sent again on a new connection: at least once, never lost
            assert sorted(set(collector.times())) == expected
        else:
            assert collector.times() == expected
    finally:
        sender.client.close()  # before the collector stops waiting for more requests
        collector.close()


def test_the_exporter_sends_inline_in_steady_state(receiver):
    """End to end: after the first export, requests come from the sampling thread, seen as the
    sender thread's parked state, and nothing is lost or repeated."""
    # A sample every 0.2 s (speed 5): at 20x (every 50 ms) a loaded CI machine answered slower than
    # samples came, so the sender thread rightly took over and sent them two to a request.
    exporter = start_macmon_exporter(receiver.url, "--log-level", "debug", fake_env={"FAKE_MACMON_SPEED": "5"})
    assert receiver.wait_for(lambda: len(receiver.series("mac.power.total")) >= 40, 30)
    assert exporter.stop(timeout=30) == 0
    times = [p.time_ns for p in receiver.series("mac.power.total")]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert len(receiver.requests) == len(times)  # one request per sample, as each one arrives
    parked = exporter.stderr.count("sender parked")
    # The sender thread sent only the first (and, on a loaded machine, the odd slow one): without
    # the inline path it would park after every request.
    assert 1 <= parked <= max(3, len(times) // 4), exporter.stderr[-3000:]
