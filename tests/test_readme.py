"""The README is for operators; these keep it true to the code."""

from __future__ import annotations

import os
import re

from zope_lb.settings import OPTIONS, POOL_FIELDS, Option, option_topic, options_table

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


def topic_tables(table: str) -> dict[str, list[str]]:
    """The option names listed under each `####` topic heading of the generated text."""
    tables: dict[str, list[str]] = {}
    current = None
    for line in table.splitlines():
        if line.startswith("#### "):
            current = line[5:]
            assert current not in tables, f"topic {current} appears twice"
            tables[current] = []
        elif line.startswith("| `"):
            assert current is not None, "an option row before any topic heading"
            tables[current].append(line.split("`")[1])
    return tables


def test_every_option_is_in_exactly_one_topic_table():
    tables = topic_tables(options_table())
    listed = [name for names in tables.values() for name in names]
    expected = [o.name for o in OPTIONS] + [f"pool.NAME.{f}" for f in POOL_FIELDS]
    assert sorted(listed) == sorted(expected)
    assert len(listed) == len(set(listed))
    assert tables["Timeouts and deadlines"][:2] == ["timeout.connect", "timeout.read"]
    assert "vhm.prefix" in tables["Front proxy and Zope URLs"]
    assert "admin.users" in tables["Administration"]


def test_an_option_without_a_topic_is_listed_under_other():
    new = Option("frobnicate.level", str, "3", "A future option nobody mapped yet.")
    assert option_topic(new.name) == "Other"
    assert option_topic("timeout.client") == "Timeouts and deadlines"
    assert option_topic("shutdown.timeout") == "Timeouts and deadlines"
    assert option_topic("access_log") == "Logging"
    assert option_topic("prefixes") == "Other"  # a key matches whole name parts only
    tables = topic_tables(options_table((*OPTIONS, new)))
    assert tables["Other"] == ["frobnicate.level"]
    assert list(tables)[-1] == "Other"
