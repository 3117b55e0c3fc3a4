#!/usr/bin/env python3
"""The peer of bench/fleet.sh: three nginx routers switched the way people script it.

Two nginx "backends" answer "blue" and "green". Three nginx routers proxy to the one
named in an included file. A switch rewrites that file for every router and runs
`nginx -s reload` on each (one after the other, as a deploy script does); the time runs
from the start of the switch until all three answer `GET /` from the new backend (each
polled in turn over a fresh connection, since nginx keeps old workers for open ones).
Prints the same figures as the turnout test: p50, p90, p99 and max over N switches.
Usage: python3 bench/fleet_nginx.py [N]   (needs nginx; runs everything under a temp dir)
"""
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def conf(root, name, server):
    d = os.path.join(root, name)
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(
            "worker_processes 1;\nerror_log logs/error.log warn;\npid logs/nginx.pid;\n"
            "daemon on;\nevents { worker_connections 256; }\n"
            "http { access_log off; " + server + " }\n"
        )
    return d


def start(d):
    subprocess.run([NGINX, "-p", d, "-c", "nginx.conf"], check=True)


def get(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/")
        body = c.getresponse().read().decode().strip()
        c.close()
        return body
    except OSError:
        return None


def main():
    root = tempfile.mkdtemp(prefix="fleet-nginx-")
    dirs = []
    try:
        ports = {}
        for name in ("blue", "green"):
            ports[name] = free_port()
            d = conf(root, name, "server { listen 127.0.0.1:%d; location / { return 200 '%s\\n'; } }" % (ports[name], name))
            start(d)
            dirs.append(d)
        routers = []
        for i in range(3):
            port = free_port()
            d = os.path.join(root, "router%d" % i)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "upstream.conf"), "w") as f:
                f.write("proxy_pass http://127.0.0.1:%d;\n" % ports["blue"])
            conf(root, "router%d" % i, "server { listen 127.0.0.1:%d; location / { include %s/upstream.conf; } }" % (port, d))
            start(d)
            dirs.append(d)
            routers.append((d, port))
        deadline = time.time() + 10
        while any(get(p) != "blue" for _, p in routers):
            if time.time() > deadline:
                sys.exit("nginx routers did not come up")
            time.sleep(0.01)
        took = []
        for i in range(N):
            to = "green" if i % 2 == 0 else "blue"
            t0 = time.perf_counter()
            for d, _ in routers:
                with open(os.path.join(d, "upstream.conf"), "w") as f:
                    f.write("proxy_pass http://127.0.0.1:%d;\n" % ports[to])
                subprocess.run([NGINX, "-p", d, "-c", "nginx.conf", "-s", "reload"], check=True,
                               stderr=subprocess.DEVNULL)
            done = [False] * 3
            end = t0 + 10
            while not all(done):
                if time.perf_counter() > end:
                    sys.exit("switch %d: not served by all after 10 s" % i)
                for k, (_, p) in enumerate(routers):
                    if not done[k] and get(p) == to:
                        done[k] = True
            took.append(time.perf_counter() - t0)
        took.sort()

        def at(q):
            import math
            return took[min(max(math.ceil(len(took) * q), 1), len(took)) - 1] * 1000

        print("NGINX_FLEET_SWITCH switches=%d p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f max_ms=%.1f "
              "(rewrite + nginx -s reload on 3 routers, until all 3 serve the new backend)"
              % (len(took), at(0.5), at(0.9), at(0.99), at(1.0)))
    finally:
        for d in dirs:
            subprocess.run([NGINX, "-p", d, "-c", "nginx.conf", "-s", "stop"], stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


main()
