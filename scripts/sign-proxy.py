#!/usr/bin/env python3
"""A small HTTP proxy for schemathesis's signed pass: it signs interruption notices on their way to spotd.

Schemathesis cannot compute spotd's HMAC itself, so without this every notice in the signed pass would be refused
with 401 and no signed body would ever be parsed. The proxy adds X-Spotd-Timestamp and X-Spotd-Signature to a
POST under /v1/interruptions that carries no X-Spotd-Signature of its own; a request that does carry one (a value
schemathesis generated) goes through untouched, so the header checks are fuzzed too. Everything else is passed
through byte for byte. One request per connection (the proxy asks spotd to close after answering), which every
HTTP client handles.

usage: sign-proxy.py LISTEN_PORT UPSTREAM_PORT SECRET
"""
import hashlib
import hmac
import select
import socket
import sys
import threading
import time

LISTEN, UPSTREAM, SECRET = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()


def read_request(client):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            return None, None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or b"0")
    while len(rest) < length:
        chunk = client.recv(65536)
        if not chunk:
            break
        rest += chunk
    return lines, rest


def handle(client):
    try:
        lines, body = read_request(client)
        if lines is None:
            return
        method, target = lines[0].split(b" ")[:2]
        headers = [line for line in lines[1:] if line.split(b":")[0].strip().lower() not in (b"connection", b"keep-alive")]
        names = {line.split(b":")[0].strip().lower() for line in headers}
        if method == b"POST" and target.startswith(b"/v1/interruptions") and b"x-spotd-signature" not in names:
            headers = [line for line in headers if line.split(b":")[0].strip().lower() != b"x-spotd-timestamp"]
            timestamp = str(int(time.time())).encode()
            digest = hmac.new(SECRET, timestamp + b"." + body, hashlib.sha256).hexdigest().encode()
            headers += [b"X-Spotd-Timestamp: " + timestamp, b"X-Spotd-Signature: sha256=" + digest]
        upstream = socket.create_connection(("127.0.0.1", UPSTREAM))
        upstream.sendall(b"\r\n".join([lines[0]] + headers + [b"Connection: close"]) + b"\r\n\r\n" + body)
        # Pipe the answer back until spotd closes (or, for an event stream, until the client does).
        while True:
            ready, _, _ = select.select([upstream, client], [], [], 60)
            if not ready:
                break
            if upstream in ready:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                client.sendall(chunk)
            if client in ready and not client.recv(65536, socket.MSG_PEEK):
                break
        upstream.close()
    except OSError:
        pass
    finally:
        client.close()


server = socket.create_server(("127.0.0.1", LISTEN), backlog=256)
while True:
    connection, _ = server.accept()
    threading.Thread(target=handle, args=(connection,), daemon=True).start()
