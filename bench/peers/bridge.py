#!/usr/bin/env python3
"""The Python asyncio bridge of the original deployment, as its authors would write it.

An asyncio TCP server on 127.0.0.1:8082 that parses each HTTP request, strips
Authorization and Txn-Token, re-reads the JWT-SVID and the TraT from disk on every
request, adds `Authorization: Bearer <jwt>` and `Txn-Token: <trat>`, forwards the request
over the Unix socket and pipes the response back (JSON and SSE streams alike), answering
502 when the socket fails. Client connections are kept alive; each request opens its own
connection to the socket (`Connection: close`), and the response is piped until the
socket closes, so SSE events pass as they arrive.

Used only as the benchmark peer of sanctum-bridge (bench/README.md).
"""

import argparse
import asyncio
import json

STRIP = {b"authorization", b"txn-token", b"connection", b"keep-alive", b"proxy-connection"}


def read_token(path):
    with open(path, "rb") as f:
        return f.read().strip()


def error_response(status, reason, message):
    body = json.dumps({"type": "error", "error": {"type": "api_error", "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def pipe_body(reader, writer, headers):
    """Copies a request body from the client to the socket, as framed by the client."""
    length = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            writer.write(size_line)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    line = await reader.readuntil(b"\r\n")
                    writer.write(line)
                    if line == b"\r\n":
                        return
            writer.write(await reader.readexactly(size + 2))
    elif length:
        remaining = length
        while remaining:
            chunk = await reader.read(min(remaining, 65536))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            writer.write(chunk)
            remaining -= len(chunk)


async def handle_request(reader, writer, args):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    request_line = lines[0]
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    keep_alive = not any(n == b"connection" and v.lower() == b"close" for n, v in headers)

    try:
        jwt = read_token(args.jwt_file)
        trat = read_token(args.trat_file)
    except OSError as e:
        writer.write(error_response(503, "Service Unavailable", f"cannot read token: {e}"))
        await writer.drain()
        return keep_alive

    try:
        up_reader, up_writer = await asyncio.open_unix_connection(args.upstream_socket)
    except OSError as e:
        writer.write(error_response(502, "Bad Gateway", f"upstream socket unavailable: {e}"))
        await writer.drain()
        return keep_alive

    try:
        out = [request_line]
        out += [n + b": " + v for n, v in headers if n not in STRIP]
        out.append(b"authorization: Bearer " + jwt)
        out.append(b"txn-token: " + trat)
        out.append(b"connection: close")
        up_writer.write(b"\r\n".join(out) + b"\r\n\r\n")
        await pipe_body(reader, up_writer, headers)
        await up_writer.drain()

        # Response head: drop the upstream's Connection header so the client keeps its
        # connection; the body is piped until the socket closes.
        response_head = await up_reader.readuntil(b"\r\n\r\n")
        kept = [
            line
            for line in response_head[:-4].split(b"\r\n")
            if not line.lower().startswith(b"connection:")
        ]
        writer.write(b"\r\n".join(kept) + b"\r\n\r\n")
        while True:
            chunk = await up_reader.read(65536)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError) as e:
        writer.write(error_response(502, "Bad Gateway", f"upstream failed: {e}"))
        await writer.drain()
        return False
    finally:
        up_writer.close()
    return keep_alive


async def handle_client(reader, writer, args):
    try:
        while await handle_request(reader, writer, args):
            pass
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--upstream-socket", default="/run/sage/llm.sock")
    parser.add_argument("--jwt-file", default="/var/run/spiffe/jwt")
    parser.add_argument("--trat-file", default="/run/sage/trat.jwt")
    args = parser.parse_args()
    server = await asyncio.start_server(
        lambda r, w: handle_client(r, w, args), args.host, args.port, limit=1 << 20
    )
    print(f"listening on {args.host}:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
