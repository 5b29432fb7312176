"""The README is for operators; these keep it true to the code."""

from __future__ import annotations

import os
import re

from zope_lb.settings import OPTIONS, options_table

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def read() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_option_table_is_generated_from_the_schema():
    text = read()
    match = re.search(r"<!-- options-table.*?-->\n(.*?)\n<!-- /options-table -->", text, re.S)
    assert match, "README lacks the generated option table"
    assert match.group(1) == options_table(), (
        "README option table is stale: paste zope_lb.settings.options_table()")
    for option in OPTIONS:
        assert f"| `{option.name}` |" in match.group(1)


def test_quickstart_has_the_two_commands_ci_runs():
    text = read()
    assert "python -m pip install -e '.[test]' && zope-lb demo" in text
    test_command = "python -m pip install -e '.[test]' && python -m pytest"
    assert test_command in text
    with open(os.path.join(os.path.dirname(README), ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert test_command in ci
