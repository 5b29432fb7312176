"""zope_lb's modules import each other without cycles, counting lazy imports
inside functions and TYPE_CHECKING ones: a cycle means two modules that can
only be understood (and changed) together."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from import_graph import cycles, import_edges

import zope_lb

PACKAGE = Path(zope_lb.__file__).parent

def test_no_import_cycles():
    assert cycles(import_edges(PACKAGE)) == []


def test_settings_split_modules_stand_below_the_schema():
    edges = import_edges(PACKAGE)
    for low in ("zope_lb.converters", "zope_lb.backendlines", "zope_lb.headers"):
        assert (low, "zope_lb.settings") not in edges, low
    assert ("zope_lb.strategies", "zope_lb.settings") not in edges
    assert ("zope_lb.demo", "zope_lb.cli") not in edges
    for step in ("zope_lb.logcheck", "zope_lb.servercheck"):  # inicheck runs them
        assert ("zope_lb.inifile", step) not in edges, step


def test_the_graph_sees_lazy_and_type_only_imports(tmp_path):
    """The checker itself: a cycle closed only by a function-level or a
    TYPE_CHECKING import is found, a ``from . import sub`` is no edge to the package."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from . import a\n",
        "a.py": "from .b import thing\n",
        "b.py": "def f():\n    from .a import other\n",
        "c.py": textwrap.dedent("""\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .d import D
            """),
        "d.py": "from . import c\n",
        "sub/__init__.py": "",
        "sub/x.py": "from . import y\n",
        "sub/y.py": "from .. import sub\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    edges = import_edges(package)
    assert edges[("pkg.b", "pkg.a")] == "line 2, in a function"
    assert edges[("pkg.c", "pkg.d")] == "line 3, TYPE_CHECKING"
    assert ("pkg.sub.x", "pkg.sub") not in edges
    assert cycles(edges) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]


def test_script_names_each_edge_of_a_cycle(tmp_path):
    package = tmp_path / "zope_lb"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text("def demo():\n    from . import demo\n")
    (package / "demo.py").write_text("from .cli import setup_logging\n")
    script = Path(__file__).with_name("import_graph.py")
    result = subprocess.run([sys.executable, str(script), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "cycle: zope_lb.cli zope_lb.demo",
        "    zope_lb.cli -> zope_lb.demo  (line 2, in a function)",
        "    zope_lb.demo -> zope_lb.cli  (line 1, top)",
    ]
