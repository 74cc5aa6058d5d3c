"""The dashboards step (dashboards.py) without Go: it runs the checker on every dashboard and
fails the step when the checker refuses one."""

import os
import stat
import tempfile
import unittest
from unittest import mock

import dashboards
from util import SbError


def stub(directory: str, exit_code: int) -> str:
    """A stand-in checker that records its arguments and exits with `exit_code`."""
    path = os.path.join(directory, "dashboards")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\necho \"$@\" > {directory}/args\necho 'x.json: not a valid Grafana dashboard'\n"
                f"exit {exit_code}\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


class Step(unittest.TestCase):
    def run_step(self, exit_code: int):
        with tempfile.TemporaryDirectory() as d, \
                mock.patch.object(dashboards.chartcheck, "_run") as go_test, \
                mock.patch.object(dashboards.chartcheck, "_go", return_value="go"), \
                mock.patch.object(dashboards, "checker", return_value=(stub(d, exit_code), "cached")):
            try:
                return dashboards.check(), go_test.call_args, open(os.path.join(d, "args")).read().split()
            except SbError as e:
                return e, go_test.call_args, open(os.path.join(d, "args")).read().split()

    def test_every_dashboard_is_checked_after_the_checkers_own_tests(self):
        out, go_test, args = self.run_step(0)
        self.assertIn("ok (", out)
        self.assertEqual(go_test.args[0][:2], ["go", "test"])
        self.assertEqual(go_test.kwargs["cwd"], dashboards.MODULE)
        self.assertEqual(args, dashboards.files())
        self.assertGreaterEqual(len(args), 5)

    def test_a_refused_dashboard_fails_the_step(self):
        out, _, _ = self.run_step(1)
        self.assertIsInstance(out, SbError)
        self.assertIn("not a valid Grafana dashboard", str(out))


if __name__ == "__main__":
    unittest.main()
