#!/usr/bin/env python3
"""Writes the hand-made seeds of the end-to-end fuzz targets (server_h2, client_h2) and the
structured parsers (service_config, target) into fuzz/corpus/. HTTP/2 frames are built here
byte by byte (HPACK literals without indexing), so the seeds start from well-formed exchanges
the fuzzer then mutates. Run from the repository root: python3 fuzz/seeds.py"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack(headers):
    out = b""
    for name, value in headers:
        name, value = name.encode(), value.encode()
        out += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return out


def grpc(message, compressed=False, declared=None):
    length = len(message) if declared is None else declared
    return bytes([1 if compressed else 0]) + struct.pack(">I", length) + message


def request(path, stream=1, extra=(), content_type="application/grpc"):
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x"),
               ("content-type", content_type), ("te", "trailers")] + list(extra)
    return frame(HEADERS, END_HEADERS, stream, hpack(headers))


def response_head(stream, status="200", extra=()):
    return frame(HEADERS, END_HEADERS, stream, hpack([(":status", status), ("content-type", "application/grpc")] + list(extra)))


def trailers(stream, code="0", message=None):
    fields = [("grpc-status", code)] + ([("grpc-message", message)] if message else [])
    return frame(HEADERS, END_HEADERS | END_STREAM, stream, hpack(fields))


def write(target, name, control, body):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    with open(os.path.join(ROOT, target, "seed-" + name), "wb") as f:
        f.write(bytes([control]) + body)


def server_seeds():
    echo = request("/fuzz.Echo/Unary") + frame(DATA, END_STREAM, 1, grpc(b"hello"))
    write("server_h2", "unary", 0x20, echo)
    write("server_h2", "unary-one-byte-writes", 0x00, echo)
    bidi = request("/fuzz.Echo/Stream") + frame(DATA, 0, 1, grpc(b"a")) + frame(DATA, 0, 1, grpc(b"b")) + frame(DATA, END_STREAM, 1, b"")
    write("server_h2", "bidi", 0x40, bidi)
    write("server_h2", "fail", 0x20, request("/fuzz.Echo/Fail") + frame(DATA, END_STREAM, 1, grpc(b"why")))
    check = request("/grpc.health.v1.Health/Check") + frame(DATA, END_STREAM, 1, grpc(b""))
    watch = request("/grpc.health.v1.Health/Watch", 3) + frame(DATA, END_STREAM, 3, grpc(b""))
    write("server_h2", "health", 0x20, check + watch)
    write("server_h2", "unknown-method", 0x20, request("/fuzz.Echo/Nope") + frame(DATA, END_STREAM, 1, grpc(b"")))
    write("server_h2", "bad-content-type", 0x20, request("/fuzz.Echo/Unary", content_type="text/plain") + frame(DATA, END_STREAM, 1, b""))
    write("server_h2", "too-large", 0x20, request("/fuzz.Echo/Unary") + frame(DATA, END_STREAM, 1, grpc(b"x", declared=1 << 20)))
    write("server_h2", "compressed-without-encoding", 0x20, request("/fuzz.Echo/Unary") + frame(DATA, END_STREAM, 1, grpc(b"x", compressed=True)))
    gzip = request("/fuzz.Echo/Unary", extra=[("grpc-encoding", "gzip")]) + frame(DATA, END_STREAM, 1, grpc(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\x48\xcd\xc9\xc9\x07\x00\x86\xa6\x10\x36\x05\x00\x00\x00", compressed=True))
    write("server_h2", "gzip", 0x20, gzip)
    write("server_h2", "timeout", 0x20, request("/fuzz.Echo/Stream", extra=[("grpc-timeout", "10m")]) + frame(DATA, 0, 1, grpc(b"a")))
    reset = request("/fuzz.Echo/Stream") + frame(RST_STREAM, 0, 1, struct.pack(">I", 8))
    write("server_h2", "rapid-reset", 0x20, b"".join(
        request("/fuzz.Echo/Stream", s) + frame(RST_STREAM, 0, s, struct.pack(">I", 8)) for s in range(1, 40, 2)) + reset)
    write("server_h2", "pings", 0x20, b"".join(frame(PING, 0, 0, bytes(8)) for _ in range(20)))
    write("server_h2", "window-updates", 0x20, frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30)) + echo)
    write("server_h2", "goaway", 0x20, echo + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0) + b"bye"))
    split = request("/fuzz.Echo/Unary")
    block = split[9:]
    cont = frame(HEADERS, 0, 1, block[:10]) + frame(CONTINUATION, END_HEADERS, 1, block[10:]) + frame(DATA, END_STREAM, 1, grpc(b"c"))
    write("server_h2", "continuation", 0x20, cont)
    write("server_h2", "no-preface", 0x21, echo)


def client_seeds():
    body = grpc(b"u")
    ok = b"".join(response_head(s) + frame(DATA, 0, s, body) + trailers(s) for s in (1, 3, 5))
    write("client_h2", "ok", 0x00, frame(SETTINGS, ACK, 0) + ok)
    write("client_h2", "ok-then-silent", 0x02, frame(SETTINGS, ACK, 0) + ok)
    write("client_h2", "trailers-only", 0x00, b"".join(
        frame(HEADERS, END_HEADERS | END_STREAM, s, hpack([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "14"), ("grpc-message", "down%20here")]))
        for s in (1, 3, 5)))
    write("client_h2", "http-500", 0x00, frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack([(":status", "500")])))
    write("client_h2", "no-content-type", 0x00, frame(HEADERS, END_HEADERS, 1, hpack([(":status", "200")])) + trailers(1))
    write("client_h2", "bad-status", 0x00, response_head(1) + trailers(1, "banana"))
    write("client_h2", "too-large", 0x00, response_head(1) + frame(DATA, 0, 1, grpc(b"x", declared=1 << 20)))
    write("client_h2", "rst", 0x00, frame(RST_STREAM, 0, 1, struct.pack(">I", 7)) + frame(RST_STREAM, 0, 3, struct.pack(">I", 2)))
    write("client_h2", "goaway", 0x00, frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    write("client_h2", "goaway-after-1", 0x02, response_head(1) + frame(DATA, 0, 1, body) + trailers(1) + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 11) + b"too_many_pings"))
    write("client_h2", "stream-of-messages", 0x00, response_head(3) + frame(DATA, 0, 3, grpc(b"1") + grpc(b"2") + grpc(b"3")) + trailers(3, "0"))
    write("client_h2", "ping", 0x02, frame(PING, 0, 0, bytes(8)))
    write("client_h2", "no-settings", 0x01, ok)


def text_seeds():
    configs = {
        "retry": '{"methodConfig":[{"name":[{"service":"s","method":"m"}],"timeout":"1.5s","waitForReady":true,'
                 '"retryPolicy":{"maxAttempts":4,"initialBackoff":"0.1s","maxBackoff":"1s","backoffMultiplier":2,'
                 '"retryableStatusCodes":["UNAVAILABLE",14]}}],"retryThrottling":{"maxTokens":10,"tokenRatio":0.1}}',
        "hedging": '{"methodConfig":[{"name":[{"service":"s"}],"hedgingPolicy":{"maxAttempts":3,"hedgingDelay":"0.05s",'
                   '"nonFatalStatusCodes":["UNAVAILABLE"]}}]}',
        "default": '{"methodConfig":[{"name":[{}],"maxRequestMessageBytes":1024,"maxResponseMessageBytes":"2048"}],'
                   '"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":"x"}}',
        "lb-policy": '{"loadBalancingPolicy":"ROUND_ROBIN"}',
        "both-policies": '{"methodConfig":[{"name":[{"service":"s"}],"retryPolicy":{},"hedgingPolicy":{}}]}',
    }
    for name, text in configs.items():
        os.makedirs(os.path.join(ROOT, "service_config"), exist_ok=True)
        with open(os.path.join(ROOT, "service_config", "seed-" + name), "w") as f:
            f.write(text)
    targets = ["dns:///example.com:443", "dns://8.8.8.8/example.com", "ipv4:127.0.0.1:1,10.0.0.2:2",
               "ipv6:[::1]:50051,[fe80::1]", "unix:///tmp/sock", "unix:relative/sock", "unix-abstract:name",
               "localhost:50051", "passthrough:///host:1", "DNS:%41%42", "x:", ":", "[::1]:80"]
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    for i, text in enumerate(targets):
        with open(os.path.join(ROOT, "target", f"seed-{i}"), "w") as f:
            f.write(text)


def machine_seeds():
    # Structured targets decode any bytes; a few random-looking seeds give the fuzzer a start.
    for target in ("subchannel", "lb_policy", "retry", "keepalive"):
        os.makedirs(os.path.join(ROOT, target), exist_ok=True)
        for i in range(4):
            with open(os.path.join(ROOT, target, f"seed-{i}"), "wb") as f:
                f.write(bytes((j * 37 + i * 101 + 7) % 256 for j in range(64 + 64 * i)))


if __name__ == "__main__":
    server_seeds()
    client_seeds()
    text_seeds()
    machine_seeds()
