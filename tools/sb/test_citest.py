"""Unit tests of `./sb test`'s own logic (no cargo, no platform):

    python3 -B -m unittest discover -s tools/sb -p 'test_*.py'
"""

from __future__ import annotations

import os
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import citest  # noqa: E402

GB = 10**9


class DiskTest(unittest.TestCase):
    def test_enough_free_space_lacks_nothing(self):
        self.assertEqual(citest.disk_shortfall(free=30 * GB, reusable=0, needed=20 * GB), 0)

    def test_an_earlier_builds_target_counts_toward_the_need(self):
        self.assertEqual(citest.disk_shortfall(free=8 * GB, reusable=12 * GB, needed=20 * GB), 0)

    def test_a_short_disk_says_by_how_much(self):
        self.assertEqual(citest.disk_shortfall(free=5 * GB, reusable=2 * GB, needed=20 * GB), 13 * GB)

    def test_tree_bytes_counts_files_below_and_not_links(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "a", "b"))
            with open(os.path.join(d, "a", "b", "f"), "wb") as f:
                f.write(b"x" * 100_000)
            os.symlink(os.path.join(d, "a", "b", "f"), os.path.join(d, "link"))
            n = citest.tree_bytes(d)
            self.assertGreaterEqual(n, 100_000)
            self.assertLess(n, 200_000)  # the link is not counted a second time

    def test_a_missing_tree_is_empty(self):
        self.assertEqual(citest.tree_bytes("/nonexistent/target"), 0)


if __name__ == "__main__":
    unittest.main()
