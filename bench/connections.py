#!/usr/bin/env python3
"""bench/connections.py — what an idle keep-alive connection costs turnout, nginx and
HAProxy, measured in one run (driven by bench/connections.sh).

For each proxy, protocol (plain HTTP/1.1, TLS HTTP/1.1, h2c with prior knowledge) and
count (default 1000, 5000, 15000): a fresh proxy process (one worker, pinned to core
BENCH_PROXY_CPU) in front of an nginx backend; its RSS (all its processes) is read,
COUNT connections are opened (100 at a time), each sends one GET, reads the whole answer
and stays open; then RSS again -> bytes per idle connection. Then every connection is
closed and, 8 s later (turnout releases freed memory at most 5 s after many closes), the
RSS once more. At the largest plain count a normal client's latency (a keep-alive GET
loop, p50/p99 of 2000 requests) is measured with the idle crowd open and without it.

Usage: python3 bench/connections.py --turnout PATH [--counts 1000,5000,15000]
                                    [--protocols http,tls,h2c] [--out DIR]
Prints a Markdown table; raw numbers go to DIR/results.json.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY_CPU = os.environ.get("BENCH_PROXY_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kb(pid):
    """VmRSS of `pid` and all its descendants, in kB."""
    total = 0
    todo = [pid]
    seen = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total


def wait_port(port, proc, what, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port} within {deadline}s")


def start(cmd, log, env=None):
    return subprocess.Popen(
        ["taskset", "-c", PROXY_CPU] + cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass


# ----------------------------------------------------------------- clients
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_get(authority):
    # HPACK: :method GET (static 2), :path / (4), :scheme http (6), :authority literal (1).
    block = b"\x82\x84\x86\x41" + bytes([len(authority)]) + authority
    return (
        H2_PREFACE
        + h2_frame(0x4, 0, 0, b"")  # our SETTINGS (defaults)
        + h2_frame(0x1, 0x5, 1, block)  # HEADERS, END_STREAM | END_HEADERS
    )


def read_http1(s):
    """Reads one HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed in the body")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"status {head[:20]!r}")


def read_h2(s):
    """Reads frames until stream 1 ends (DATA or HEADERS with END_STREAM); acks SETTINGS."""
    buf = b""
    acked = False
    while True:
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            buf = buf[9 + length:]
            if kind == 0x4 and not flags & 0x1 and not acked:
                s.sendall(h2_frame(0x4, 0x1, 0, b""))
                acked = True
            if kind == 0x7:
                raise OSError("GOAWAY")
            if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:
                return
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed before the response ended")
        buf += chunk


def open_idle(port, count, protocol, tls_ctx):
    conns = []
    for i in range(count):
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        if protocol == "tls":
            s = tls_ctx.wrap_socket(raw, server_hostname="localhost")
        else:
            s = raw
        if protocol == "h2c":
            s.sendall(h2_get(b"127.0.0.1"))
            read_h2(s)
        else:
            s.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            read_http1(s)
        conns.append(s)
    return conns


def latency(port, n=2000):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        read_http1(s)
        times.append(time.perf_counter() - t)
    s.close()
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


# ----------------------------------------------------------------- servers
def backend(out):
    port = free_port()
    d = os.path.join(out, "backend")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(HERE, "templates", "nginx-backend.conf.in")) as f:
        conf = f.read().replace("@DIR@", d).replace("@PORT@", str(port))
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    proc = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, "nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port, proc, "backend nginx")
    return proc, port


def start_proxy(name, d, backend_port, cert, key, turnout_bin):
    """Starts `name` with a plain, a TLS and an h2c listener: (process, ports)."""
    os.makedirs(d, exist_ok=True)
    ports = {p: free_port() for p in ("http", "tls", "h2c")}
    log = open(os.path.join(d, "log"), "w")
    if name == "nginx":
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        conf = f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    keepalive_requests 100000000; keepalive_timeout 300s; http2_idle_timeout 300s;
    upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{ports['http']} backlog=4096;
        listen 127.0.0.1:{ports['tls']} ssl backlog=4096;
        ssl_certificate {cert}; ssl_certificate_key {key};
        location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
    server {{
        listen 127.0.0.1:{ports['h2c']} http2 backlog=4096;
        location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        proc = start(["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", path], log)
    elif name == "haproxy":
        pem = os.path.join(d, "cert.pem")
        with open(pem, "w") as f:
            f.write(open(cert).read() + open(key).read())
        conf = f"""global
    nbthread 1
    maxconn 9500
    # Two files per connection (client and server side) within the machine's 20000.
    ulimit-n 19900
    pidfile {d}/haproxy.pid
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend fe
    bind 127.0.0.1:{ports['http']}
    bind 127.0.0.1:{ports['tls']} ssl crt {pem}
    bind 127.0.0.1:{ports['h2c']} proto h2
    default_backend be
backend be
    server backend 127.0.0.1:{backend_port}
"""
        path = os.path.join(d, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(conf)
        proc = start(["haproxy", "-db", "-f", path], log)
    else:
        ports["h2c"] = ports["http"]  # one port: the preface says HTTP/2
        admin = free_port()
        conf = f"""[listen]
addr = "127.0.0.1:{ports['http']}"
[listen.tls]
addr = "127.0.0.1:{ports['tls']}"
cert = "{cert}"
key = "{key}"
[admin]
addr = "127.0.0.1:{admin}"
token = "env:TURNOUT_ADMIN_TOKEN"
[state]
dir = "{d}/state"
[slots.blue]
upstreams = ["127.0.0.1:{backend_port}"]
"""
        path = os.path.join(d, "turnout.toml")
        with open(path, "w") as f:
            f.write(conf)
        env = dict(os.environ, TURNOUT_ADMIN_TOKEN="bench", TURNOUT_WORKER_THREADS="1")
        proc = start([turnout_bin, "serve", "--config", path], log, env=env)
    for p in set(ports.values()):
        wait_port(p, proc, name)
    return proc, ports


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--turnout", required=True)
    ap.add_argument("--counts", default="1000,5000,15000")
    ap.add_argument("--protocols", default="http,tls,h2c")
    ap.add_argument("--proxies", default="nginx,haproxy,turnout")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    counts = [int(c) for c in a.counts.split(",")]
    out = a.out or tempfile.mkdtemp(prefix="turnout-conns.")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(counts) + 200 > hard:
        raise SystemExit(f"this machine allows {hard} open files; the largest count needs {max(counts) + 200}")
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    cert, key = os.path.join(out, "cert.pem"), os.path.join(out, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    tls_ctx = ssl.create_default_context(cafile=cert)
    tls_ctx.set_alpn_protocols(["http/1.1"])
    back, back_port = backend(out)
    results = []
    try:
        for proto in a.protocols.split(","):
            for count in counts:
                for name in a.proxies.split(","):
                    d = os.path.join(out, f"{name}-{proto}-{count}")
                    proc, ports = start_proxy(name, d, back_port, cert, key, a.turnout)
                    try:
                        port = ports[proto]
                        # Warm up: a few connections, answered and closed.
                        for c in open_idle(port, 20, proto, tls_ctx):
                            c.close()
                        time.sleep(1)
                        before = rss_kb(proc.pid)
                        row = {"proxy": name, "protocol": proto, "count": count, "rss_before_kb": before}
                        if proto == "http" and count == max(counts):
                            row["p50_us_alone"], row["p99_us_alone"] = latency(ports["http"])
                        try:
                            conns = open_idle(port, count, proto, tls_ctx)
                        except OSError as e:
                            row["error"] = f"opening the crowd: {e}"
                            results.append(row)
                            print(json.dumps(row), file=sys.stderr)
                            continue
                        time.sleep(2)
                        after = rss_kb(proc.pid)
                        row["rss_idle_kb"] = after
                        row["bytes_per_conn"] = (after - before) * 1024 / count
                        if proto == "http" and count == max(counts):
                            row["p50_us_crowd"], row["p99_us_crowd"] = latency(ports["http"])
                        for c in conns:
                            c.close()
                        time.sleep(8)
                        row["rss_closed_kb"] = rss_kb(proc.pid)
                        results.append(row)
                        print(json.dumps(row), file=sys.stderr)
                    finally:
                        stop(proc)
    finally:
        stop(back)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"| protocol | idle connections | " + " | ".join(f"{p} bytes/conn" for p in a.proxies.split(",")) + " |")
    print("|---|---:|" + "---:|" * len(a.proxies.split(",")))
    for proto in a.protocols.split(","):
        for count in counts:
            cells = []
            for name in a.proxies.split(","):
                r = next((r for r in results if r["proxy"] == name and r["protocol"] == proto and r["count"] == count), None)
                cells.append("-" if r is None else r.get("error", f"{r['bytes_per_conn']:.0f}"))
            print(f"| {proto} | {count} | " + " | ".join(cells) + " |")
    print()
    print("| proxy | protocol | connections | RSS before | RSS with the idle crowd | RSS 8 s after closing |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            continue
        print(f"| {r['proxy']} | {r['protocol']} | {r['count']} | {r['rss_before_kb'] / 1024:.1f} MiB | "
              f"{r['rss_idle_kb'] / 1024:.1f} MiB | {r['rss_closed_kb'] / 1024:.1f} MiB |")
    print()
    print("| proxy | normal client p50 alone | p99 alone | p50 with the crowd | p99 with the crowd |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        if "p50_us_crowd" in r:
            print(f"| {r['proxy']} | {r['p50_us_alone']:.0f} µs | {r['p99_us_alone']:.0f} µs | "
                  f"{r['p50_us_crowd']:.0f} µs | {r['p99_us_crowd']:.0f} µs |")
    print(f"\nRaw results: {out}/results.json")


if __name__ == "__main__":
    main()
