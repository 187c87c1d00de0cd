"""The module layering of issue #13: no import cycle anywhere in alft_cli (imports inside
functions count too), the experiments sit above the face (only the CLI imports them), and
the CLI talks to the core through the faces only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alft_cli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from alft_cli import api` names a module; `from alft_cli.x import f` does not
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "alft_cli.routes" in graph["alft_cli.api"]  # imported inside pretrain()
    assert "alft_cli.experiments.simulate" in graph["alft_cli.experiments.api"]


def test_no_import_cycle_in_alft_cli():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodules (re-exports) is no cycle
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_only_the_cli_imports_the_experiments():
    graph = import_graph()
    importers = {m for m, deps in graph.items()
                 if any(d.startswith("alft_cli.experiments") for d in deps)
                 and not m.startswith("alft_cli.experiments")}
    assert importers == {"alft_cli.cli_experiments"}


# The faces: the library's (api), and the layers above it that drive it (experiments, a live
# Label Studio); a package listed is only the parent of its face.
FACES = ("alft_cli.api", "alft_cli.experiments.api", "alft_cli.experiments",
         "alft_cli.labelstudio.api", "alft_cli.labelstudio")


def test_the_cli_calls_only_the_faces():
    graph = import_graph()
    cli = {m for m in graph if m == "alft_cli.cli" or m.startswith("alft_cli.cli_")}
    assert "alft_cli.cli_labelstudio" in cli  # sub-apps live in cli_*.py
    core = {d for m in cli for d in graph[m]
            if d not in FACES and d not in cli}
    # errors and progress are how the CLI reports; nothing that trains or scores.
    assert core <= {"alft_cli", "alft_cli.errors", "alft_cli.progress"}, core


def test_only_their_cli_imports_the_label_studio_face():
    graph = import_graph()
    importers = {m for m, deps in graph.items()
                 if "alft_cli.labelstudio.api" in deps and not m.startswith("alft_cli.labelstudio")}
    assert importers == {"alft_cli.cli_labelstudio"}


def test_the_readme_module_map_names_every_module():
    """The map a newcomer reads is the code's: every module (or package) is in the table."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("| module | owns |"):]
    table = table.split("\n\n")[0]
    missing = []
    for path in sorted(PACKAGE.iterdir()):
        if path.name.startswith("_") or path.name == "__pycache__":
            continue
        name = f"`{path.name}`" if path.suffix == ".py" else f"`{path.name}/`"
        if path.suffix in (".py", "") and name not in table:
            missing.append(name)
    assert not missing, f"README module map lacks {missing}"


def test_the_readme_module_map_names_each_module_once():
    """One row per owner: a module in two rows (as a half-resolved merge left it) would give a
    newcomer two answers to "where does X live"."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("| module | owns |"):].split("\n\n")[0]
    first_cells = [line.split("|")[1] for line in table.splitlines()[2:]]
    named = [n for cell in first_cells for n in re.findall(r"`([^`]+)`", cell)]
    twice = sorted({n for n in named if named.count(n) > 1})
    assert not twice, f"README module map names these in more than one row: {twice}"


CONFLICT = re.compile(r"^(<{7}|>{7})( |$)|^={7}$", re.MULTILINE)


def test_no_merge_conflict_markers_in_the_sources_and_docs():
    root = PACKAGE.parent
    files = [root / "README.md", root / "Makefile", root / "pyproject.toml", root / ".ci" / "run"]
    for folder, pattern in (("alft_cli", "*.py"), ("tests", "*.py"), ("docs", "*.md"),
                            ("bench", "*"), ("examples", "*")):
        files += [p for p in (root / folder).rglob(pattern) if p.is_file()
                  and p.suffix in (".py", ".md", ".sh", "") and "__pycache__" not in p.parts]
    hits = [f"{p.relative_to(root)}:{text[:m.start()].count(chr(10)) + 1}"
            for p in files if p.exists()
            for text in [p.read_text(errors="replace")] for m in CONFLICT.finditer(text)]
    assert not hits, f"merge conflict markers left in: {hits}"
