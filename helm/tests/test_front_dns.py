"""The front's nginx follows the edges through DNS without a reload: the chart's own nginx.conf,
run by the machine's nginx against a tiny DNS server and two stand-in edges on loopback.

Open-source nginx resolves `upstream { server name; }` only at start or reload; the chart uses
`proxy_pass $edges` with a `resolver`, which asks again once the answer is older than `valid`.
This test shows that with nginx itself: the answer changes from one edge to the other (and to
both) while nginx keeps running, and requests follow. Run through tools/sb/chartcheck.py."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from test_chart import CHART, HELM, KUBE_VERSIONS, YAML2JSON

EDGE_A, EDGE_B = "127.0.0.2", "127.0.0.3"


class Dns(threading.Thread):
    """Answers every A query with `self.answers` (TTL 1 s); AAAA and others with no records."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answers: list[str] = []
        self.queries = 0
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                q, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            i = 12
            while q[i]:
                i += q[i] + 1
            qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
            question = q[12:i + 5]
            ips = list(self.answers) if qtype == 1 else []
            self.queries += 1
            head = q[:2] + struct.pack("!HHHHH", 0x8180, 1, len(ips), 0, 0)
            body = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(ip) for ip in ips)
            self.sock.sendto(head + question + body, peer)


def edge(addr: str, port: int) -> http.server.ThreadingHTTPServer:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = addr.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer((addr, port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def free_port() -> int:
    """A port free on both stand-in edge addresses."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind((EDGE_A, 0))
            port = a.getsockname()[1]
            try:
                b.bind((EDGE_B, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on both loopback addresses")


class FrontFollowsEdges(unittest.TestCase):
    def test_nginx_follows_the_headless_service_without_a_reload(self):
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if not (nginx and HELM and YAML2JSON and KUBE_VERSIONS):
            self.fail("needs nginx and the chart tools (run through ./sb chart)")
        dns = Dns()
        dns.start()
        self.addCleanup(setattr, dns, "stop", True)
        edge_port = free_port()
        for addr in (EDGE_A, EDGE_B):
            srv = edge(addr, edge_port)
            self.addCleanup(srv.shutdown)
        with socket.socket() as s1, socket.socket() as s2:
            s1.bind(("127.0.0.1", 0))
            s2.bind(("127.0.0.1", 0))
            front_port, status_port = s1.getsockname()[1], s2.getsockname()[1]
        r = subprocess.run([HELM, "template", "sb", CHART, "-n", "chat", "--kube-version", KUBE_VERSIONS[0],
                            "-f", os.path.join(CHART, "ci", "minimal.yaml"),
                            "--set", f"edge.port={edge_port},front.port={front_port},front.statusPort={status_port}",
                            "--set", f"front.resolver=127.0.0.1:{dns.port},front.resolverValidSeconds=1"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        objs = json.loads(subprocess.run([YAML2JSON], input=r.stdout, capture_output=True, text=True, check=True).stdout)
        conf = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-front"))["data"]["nginx.conf"]
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        os.chmod(d, 0o755)
        # loopback only, files in the temp dir; everything else is the chart's text
        conf = re.sub(r"listen (\d+)", r"listen 127.0.0.1:\1", conf).replace("/tmp/", d + "/")
        conf = conf.replace("access_log /dev/stdout", f"access_log {d}/access.log")
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)
        err = open(os.path.join(d, "error.log"), "w+")
        self.addCleanup(err.close)
        proc = subprocess.Popen([nginx, "-p", d + "/", "-c", os.path.join(d, "nginx.conf"), "-e", os.path.join(d, "error.log")],
                                stdout=err, stderr=err)

        def stop():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.addCleanup(stop)

        def get(path="/healthz", port=front_port):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
                    return resp.read().decode()
            except OSError as e:
                return f"error: {e}"

        def eventually(want: set[str], seconds: float = 8.0) -> set[str]:
            seen: set[str] = set()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                seen = {get() for _ in range(6)}
                if seen == want:
                    return seen
                time.sleep(0.2)
            err.seek(0)
            self.fail(f"wanted answers from {want}, got {seen}; nginx log:\n{err.read()[-2000:]}")

        deadline = time.monotonic() + 10
        while get("/healthz", status_port) != "ok":
            self.assertIsNone(proc.poll(), "nginx exited")
            self.assertLess(time.monotonic(), deadline, "nginx did not start")
            time.sleep(0.1)
        pid = proc.pid
        dns.answers = [EDGE_A]
        eventually({EDGE_A})
        dns.answers = [EDGE_B]  # edge A gone, edge B came: the headless Service's records change
        eventually({EDGE_B})
        dns.answers = [EDGE_A, EDGE_B]  # scaled to two: both get requests
        eventually({EDGE_A, EDGE_B})
        self.assertEqual(proc.pid, pid)
        self.assertIsNone(proc.poll(), "nginx stopped")  # same process, never reloaded
        self.assertGreaterEqual(dns.queries, 3)


if __name__ == "__main__":
    unittest.main()
