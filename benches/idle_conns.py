#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections to a proxy, makes one request on each, then holds
them all idle: the client for compare.sh's idle-10k and idle-tls scenarios (proxy memory per
idle client connection).

Usage: idle_conns.py HOST PORT N HOLD_SECONDS [PARALLEL [TLS_NAME]]
With TLS_NAME the connections are TLS (HTTP/1.1 by ALPN, TLS_NAME as SNI and Host, the
certificate not verified).
Prints "ready OK FAILED" once every connection has had its response (OK = connections holding
a completed 200), then keeps them open HOLD_SECONDS (or until SIGTERM) and closes them with
RST (SO_LINGER 0) so no TIME_WAIT is left behind for the next round. Exit status 0 when every
connection got its 200.
"""

import asyncio
import signal
import socket
import ssl
import struct
import sys


async def one(host, port, gate, request, held, tls, sni):
    async with gate:
        try:
            connecting = asyncio.open_connection(
                host, port, ssl=tls, server_hostname=sni if tls else None)
            reader, writer = await asyncio.wait_for(connecting, 30)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await asyncio.wait_for(reader.readexactly(length), 30)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IndexError):
            writer.transport.abort()
            return False
        held.append(writer)
        return status == b"200"


async def main():
    host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    parallel = int(sys.argv[5]) if len(sys.argv) > 5 else 200
    tls, name = None, host
    if len(sys.argv) > 6:
        name = sys.argv[6]
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.set_alpn_protocols(["http/1.1"])
    request = f"GET / HTTP/1.1\r\nHost: {name}\r\nUser-Agent: idle_conns\r\n\r\n".encode()
    gate = asyncio.Semaphore(parallel)
    held = []
    results = await asyncio.gather(*(one(host, port, gate, request, held, tls, name) for _ in range(n)))
    ok = sum(results)
    print(f"ready {ok} {n - ok}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), hold)
    except asyncio.TimeoutError:
        pass
    linger = struct.pack("ii", 1, 0)
    for writer in held:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        writer.transport.abort()
    return 0 if ok == n else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
