"""Unit tests of the image step's own logic (no buildah, no cargo, no network):

    python3 -B -m unittest discover -s tools/sb -p 'test_*.py'
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import images  # noqa: E402
from util import SbError  # noqa: E402

LDD = """\tlinux-vdso.so.1 (0x00007ffd6a5f1000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f2c1c2a0000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2c1c280000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2c1a01e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2c1c2d3000)
"""


def pod(kind: str, containers: list[dict], user=65532) -> dict:
    return {"kind": kind, "metadata": {"name": "x"},
            "spec": {"template": {"spec": {"securityContext": {"runAsUser": user}, "containers": containers}}}}


class LddTest(unittest.TestCase):
    def test_every_mapped_file_with_the_loader_and_without_the_vdso(self):
        self.assertEqual(images.parse_ldd("edge-ws", LDD),
                         ["/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                          "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"])

    def test_a_missing_library_is_an_error(self):
        with self.assertRaisesRegex(SbError, "missing on this machine: libssl.so.3 => not found"):
            images.parse_ldd("nginx", LDD + "\tlibssl.so.3 => not found\n")

    def test_a_static_binary_needs_nothing(self):
        self.assertEqual(images.parse_ldd("x", "\tstatically linked\n"), [])

    def test_shared_libraries_go_to_the_runtime_stage(self):
        common, extra = images.split_libs({"a": ["/l/c", "/l/z", "/l/m"], "b": ["/l/c", "/l/z"], "web": ["/l/c", "/l/ssl"]})
        self.assertEqual(common, ["/l/c"])
        self.assertEqual(extra, {"a": ["/l/m", "/l/z"], "b": ["/l/z"], "web": ["/l/ssl"]})


class LayersTest(unittest.TestCase):
    def test_a_shared_layer_counts_once(self):
        manifest = {"layers": [{"digest": "sha256:a", "size": 100}, {"digest": "sha256:b", "size": 7}]}
        self.assertEqual(images.layers(manifest), [("sha256:a", 100), ("sha256:b", 7)])
        self.assertEqual(images.unique_size([[("sha256:a", 100), ("sha256:b", 7)], [("sha256:a", 100), ("sha256:c", 5)]]),
                         112)


class ContainerfileTest(unittest.TestCase):
    def test_the_stages_are_the_images_the_chart_names(self):
        """tools/images/Containerfile has one stage per image of the chart's default values, each on
        the shared runtime stage (the step also compares them with the rendered chart)."""
        with open(images.CONTAINERFILE) as f:
            text = f.read()
        found = images.stages(text)
        self.assertEqual(found.pop(images.RUNTIME_STAGE), "scratch")
        self.assertEqual(set(found.values()), {images.RUNTIME_STAGE})
        self.assertEqual(sorted(found), sorted(["edge-ws", "router", "sb-migrate", "web"]
                                               + [f"worker-{r}" for r in ("auth", "users", "invites", "dms", "presence")]))
        self.assertIn("USER 65532:65532", text)
        self.assertNotRegex(text, r"(?m)^\s*RUN\b")  # nothing runs at build time: no network, no daemon

    def test_images_user_and_front_from_rendered_objects(self):
        nginx = {"name": "nginx", "image": "switchboard/web:0.1.0", "command": ["nginx", "-c", "/etc/f/nginx.conf"]}
        objs = [pod("StatefulSet", [{"name": "edge-ws", "image": "reg.example/switchboard/edge-ws:1.2"}]),
                pod("Deployment", [nginx]),
                pod("Job", [{"name": "sb-migrate", "image": "switchboard/sb-migrate:0.1.0"}]),
                {"kind": "ConfigMap", "metadata": {"name": "sb-switchboard-front"},
                 "data": {"nginx.conf": "http {\n  server {\n    root /usr/share/switchboard/web;\n  }\n}\n"}}]
        self.assertEqual(images.chart_images(objs), {"edge-ws": "reg.example/switchboard/edge-ws:1.2",
                                                     "web": "switchboard/web:0.1.0",
                                                     "sb-migrate": "switchboard/sb-migrate:0.1.0"})
        self.assertEqual(images.chart_user(objs), 65532)
        self.assertEqual(images.front(objs)[1:], (nginx["command"], "/usr/share/switchboard/web"))
        with self.assertRaisesRegex(SbError, "one numeric runAsUser"):
            images.chart_user(objs + [pod("Deployment", [nginx], user=1000)])


class UserTest(unittest.TestCase):
    def test_numeric_and_not_root(self):
        self.assertEqual(images.image_user("65532:65532"), (65532, 65532))
        self.assertEqual(images.image_user("1000"), (1000, 1000))
        for bad in ("", "0", "0:0", "65532:0", "nonroot", "nonroot:nonroot"):
            with self.assertRaises(SbError, msg=bad):
                images.image_user(bad)

    def test_passwd_has_root_and_the_user(self):
        pw, grp = images.passwd(65532, 65532)
        self.assertIn("switchboard:x:65532:65532:", pw)
        self.assertIn("switchboard:x:65532:", grp)


class WritableTest(unittest.TestCase):
    def tree(self) -> str:
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        os.chmod(d, 0o755)
        for sub in ("usr/local/bin", "tmp", "etc"):
            os.makedirs(os.path.join(d, sub), mode=0o755)
        os.chmod(os.path.join(d, "tmp"), 0o1777)
        with open(os.path.join(d, "usr/local/bin/edge-ws"), "w"):
            pass
        os.chmod(os.path.join(d, "usr/local/bin/edge-ws"), 0o755)
        return d

    def test_a_clean_tree_with_a_world_writable_tmp(self):
        d = self.tree()
        if os.geteuid() != 0:
            self.skipTest("files here belong to the test's user, not root")
        self.assertEqual(images.writable_paths(d, 65532, 65532), [])

    def test_owned_group_or_world_writable_and_set_id_files_are_found(self):
        d = self.tree()
        uid, gid = os.stat(d).st_uid + 1, os.stat(d).st_gid
        os.chmod(os.path.join(d, "etc"), 0o775)                      # group-writable, the user's group
        os.chmod(os.path.join(d, "usr/local/bin/edge-ws"), 0o4755)   # set-uid
        with open(os.path.join(d, "etc/passwd"), "w"):
            pass
        os.chmod(os.path.join(d, "etc/passwd"), 0o666)               # world-writable
        bad = images.writable_paths(d, uid, gid)
        self.assertEqual(bad, ["/etc (writable by %d:%d)" % (uid, gid), "/etc/passwd (writable by %d:%d)" % (uid, gid),
                               "/usr/local/bin/edge-ws (set-id)"])
        # the tree's owner is the user: everything is writable, except the allowed mount point
        mine = images.writable_paths(d, os.stat(d).st_uid, -1)
        self.assertIn("/ (writable by %d:-1)" % os.stat(d).st_uid, mine)
        self.assertFalse(any(p.startswith("/tmp ") for p in mine))
        self.assertTrue(stat.S_IMODE(os.stat(os.path.join(d, "tmp")).st_mode) & 0o002)


class FrontConfTest(unittest.TestCase):
    CONF = ("    resolver kube-dns.kube-system.svc.cluster.local valid=5s ipv6=off;\n"
            "    server {\n        listen 8080 backlog=4096 reuseport;\n    }\n"
            "    server {\n        listen 8081;\n    }\n")

    def test_listeners_on_loopback_and_the_resolver_an_address(self):
        out = images.front_conf_for_test(self.CONF, 8080, 8081, 40001, 40002)
        self.assertIn("listen 127.0.0.1:40001 backlog=4096 reuseport;", out)
        self.assertIn("listen 127.0.0.1:40002;", out)
        self.assertIn("resolver 127.0.0.1 valid=5s ipv6=off;", out)

    def test_a_changed_configuration_is_an_error_not_a_silent_pass(self):
        with self.assertRaisesRegex(SbError, "changed shape"):
            images.front_conf_for_test(self.CONF, 9999, 8081, 1, 2)


if __name__ == "__main__":
    unittest.main()
