"""gates.summary_line: the one line of a gate's output that says why it failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from attractor.engines.gates import Gate, run_gate, summary_line


class Case(NamedTuple):
    test_id: str
    output: str
    expected: str


UNITTEST_FAIL = """\
.F
======================================================================
FAIL: test_minus (calc.test_cli.CliTest.test_minus)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/w/calc/test_cli.py", line 11, in test_minus
    self.assertEqual(main(["7", "-", "2"]), "5")
AssertionError: '9' != '5'
- 9
+ 5


----------------------------------------------------------------------
Ran 2 tests in 0.001s

FAILED (failures=1)
"""

CARET_TRACEBACK = """\
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/usr/lib/python3.11/unittest/main.py", line 157, in createTests
    self.test = loader.discover(self.start, self.pattern, self.top)
                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3.11/unittest/loader.py", line 332, in discover
    raise ImportError('Start directory is not importable: %r' % start_dir)
ImportError: Start directory is not importable: '/w/tests'
"""

IMPORT_FAILURE = """\
E
======================================================================
ERROR: test_ops (unittest.loader._FailedTest.test_ops)
----------------------------------------------------------------------
ImportError: Failed to import test module: test_ops
Traceback (most recent call last):
  File "/w/tests/test_ops.py", line 3, in <module>
    from calc.ops import add, sub
ModuleNotFoundError: No module named 'calc'


----------------------------------------------------------------------
Ran 1 test in 0.000s

FAILED (errors=1)
"""

PYTEST_FAIL = """\
F                                                                        [100%]
=================================== FAILURES ===================================
___________________________________ test_one ___________________________________

    def test_one():
>       assert 1 == 2
E       assert 1 == 2

t.py:2: AssertionError
=========================== short test summary info ============================
FAILED t.py::test_one - assert 1 == 2
1 failed in 0.01s
"""

CASES = [
    Case("unittest-assertion", UNITTEST_FAIL, "AssertionError: '9' != '5'"),
    Case("caret-line-last-but-one", CARET_TRACEBACK, "ImportError: Start directory is not importable: '/w/tests'"),
    Case("import-failure-names-the-module", IMPORT_FAILURE, "ModuleNotFoundError: No module named 'calc'"),
    Case("pytest-assert", PYTEST_FAIL, "assert 1 == 2"),
    Case("carets-only-at-the-end", "boom happened\n    ^^^^^\n   ~~~^^~~\n", "boom happened"),
    Case("difflib-hints", "AssertionError: 'abc' != 'abd'\n- abc\n?   ^\n+ abd\n?   ^\n",
         "AssertionError: 'abc' != 'abd'"),
    Case("plain-last-line", "compiling\nmake: *** [all] Error 2\n", "make: *** [all] Error 2"),
    Case("tool-error", "checking\nerror: no such file 'x.c'\nsee the log\n", "error: no such file 'x.c'"),
    Case("dotted-exception", "x\ncalc.ops.BoomError: bad op\n", "calc.ops.BoomError: bad op"),
    Case("bare-exception-name", "Traceback (most recent call last):\n  File \"x\"\nKeyboardInterrupt\n",
         "KeyboardInterrupt"),
    Case("separators-and-verdicts-only", "-----\nRan 0 tests in 0.000s\n\nOK\n=====\n", ""),
    Case("timeout-note-wins", "Traceback\nValueError: x\n[attractor: gate killed after its 5s timeout]\n",
         "[attractor: gate killed after its 5s timeout]"),
    Case("empty", "", ""),
    Case("word-error-in-prose-is-not-a-reason", "the error handling\nstep two failed\n", "step two failed"),
    Case("long-line-is-cut", "ValueError: " + "x" * 400, "ValueError: " + "x" * 287 + "…"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.test_id for c in CASES])
def test_summary_line(case: Case) -> None:
    assert summary_line(case.output) == case.expected


def test_summary_line_of_a_real_failing_unittest_run(tmp_path: Path) -> None:
    """The output of a real gate, not a copy: python's own traceback and unittest's verdict."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "test_x.py").write_text(
        "import unittest\n\n\nclass T(unittest.TestCase):\n    def test_x(self):\n"
        "        self.assertEqual(sorted([3, 1, 2])[0] * 10, 20)\n")
    result = run_gate(Gate(f"{sys.executable} -m unittest discover -s pkg -t . -q", 60), tmp_path)
    assert not result.ok
    assert summary_line(result.output_tail) == "AssertionError: 10 != 20", result.output_tail


def test_summary_line_of_a_real_traceback_ending_in_carets(tmp_path: Path) -> None:
    """Python 3.11 marks the failing expression with carets; the summary is the error itself."""
    script = tmp_path / "boom.py"
    script.write_text("def f(values):\n    return values['key'] + values['other']\n\n\nf({'key': 1})\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode != 0
    assert summary_line(done.stderr) == "KeyError: 'other'", done.stderr
