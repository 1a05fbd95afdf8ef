"""The code's structure, checked: dvc.yaml's code deps are each stage's import closure, a stage never imports
another stage and a helper never imports a stage, no module reaches into another's private names, no function
in stages/ is longer than one screen, and docs/pipeline.md's layout table lists the tree as it is."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

STAGES = REPO / "stages"
MAX_FUNCTION_LINES = 60
# stages/ files a stage's code imports that dvc.yaml does not list, each with why it cannot change an output
NOT_CODE_DEPS = {
    "stages/errors.py": "the StageError class alone: it decides an error's wording, never an output",
    "stages/cli.py": "argument parsing shared by every command: it hands the stage its task, seed and params "
                     "file (all in the stage's cmd and params) and calls its `run`",
    "stages/__main__.py": "`python -m stages`: calls cli.main",
}
# the modules every stage and helper may import: the shared ground under both (no stage logic in them)
SHARED = {"stages.errors", "stages.paths", "stages.params", "stages.runtime"}
MODULE_STRING = re.compile(r"^(stages(?:\.\w+)+)(?::\w+)?$")  # "stages.models.torch_student:load_student"


def module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def imports(path: Path) -> frozenset[str]:
    """The stages modules a file imports anywhere (top level, in functions, under TYPE_CHECKING), and those a
    "module:function" string names (stages/models/registry.py loads architectures that way)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from stages import paths`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            found.add(MODULE_STRING.match(node.value).group(1))
    return frozenset(name for name in found if name.split(".")[0] == "stages" and module_file(name) is not None)


def closure(start: str) -> set[str]:
    """Every stages/ file that importing `start` can run, as repository-relative paths (package __init__ files
    aside: test_package_inits_hold_no_code keeps them empty)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imports(module_file(name)))
    files = {module_file(name).relative_to(REPO).as_posix() for name in seen}
    return {f for f in files if not f.endswith("__init__.py")}


def cli_commands() -> dict[str, str]:
    """CLI command -> the stage module whose `run` it calls (read from stages/cli.py)."""
    commands = {}
    for node in ast.parse((STAGES / "cli.py").read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", None) == "command":
                name = decorator.args[0].value if decorator.args else node.name.replace("_", "-")
                runs = [n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
                        and any(alias.name == "run" for alias in n.names)]
                if runs:
                    commands[name] = runs[0]
    return commands


def stage_modules() -> set[str]:
    return set(cli_commands().values())


def all_modules() -> list[Path]:
    return sorted(STAGES.rglob("*.py"))


def test_cli_commands_are_read_from_the_cli():
    commands = cli_commands()
    assert commands["evaluate"] == "stages.evaluate" and commands["baseline"] == "stages.student"
    assert commands["check-params"] == "stages.check" and "serve" not in commands  # serve runs a helper


def test_dvc_yaml_code_deps_are_each_stages_import_closure():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    commands = cli_commands()
    checked = 0
    for stage, spec in dvc["stages"].items():
        command = spec["cmd"].split("python -m stages ")[1].split()[0]
        needed = closure(commands[command]) - set(NOT_CODE_DEPS)
        listed = {d for d in spec["deps"] if isinstance(d, str) and d.startswith("stages/")}
        assert not needed - listed, f"dvc.yaml stage {stage!r} misses code deps {sorted(needed - listed)}"
        assert not listed - needed, f"dvc.yaml stage {stage!r} lists {sorted(listed - needed)}, which its code never imports"
        checked += 1
    assert checked == len(dvc["stages"]) >= 10


def test_the_closure_follows_lazy_imports_and_registry_strings():
    assert "stages/ray_labeling.py" in closure("stages.label")  # imported inside a function
    assert "stages/models/torch_student.py" in closure("stages.predict")  # named by the registry's string


def test_package_inits_hold_no_code():
    for init in STAGES.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), init


def test_a_stage_never_imports_another_stage():
    stages = stage_modules()
    for name in sorted(stages):
        others = (imports(module_file(name)) & stages) - {name}
        assert not others, f"stage module {name} imports stage module(s) {sorted(others)}; move the shared code to a helper"


def test_a_helper_never_imports_a_stage():
    stages = stage_modules()
    helpers = [path for path in all_modules() if module_name(path) not in stages | {"stages.cli", "stages.__main__"}]
    assert len(helpers) > 30
    for path in helpers:
        found = imports(path) & stages
        assert not found, f"helper {path.relative_to(REPO)} imports stage module(s) {sorted(found)}"


def test_shared_modules_import_no_stage_and_no_stage_logic():
    for name in SHARED:
        assert not imports(module_file(name)) & stage_modules(), name


def test_no_module_imports_another_modules_private_names():
    for path in [*all_modules(), *sorted((REPO / "benchmarks").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(REPO)} imports private {private} from {node.module}"


def test_no_function_in_stages_is_longer_than_one_screen():
    long = []
    for path in all_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def layout_table() -> dict[str, set[str]]:
    """docs/pipeline.md's "Code layout" table: folder -> the modules its second column names (in backticks)."""
    text = (REPO / "docs/pipeline.md").read_text().split("## Code layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`stages/"):
            rows[re.match(r"`(stages/[\w/]*)`", cells[0]).group(1)] = set(re.findall(r"`(\w+)`", cells[1]))
    return rows


def test_the_layout_table_in_pipeline_md_lists_every_module():
    table = layout_table()
    folders = {"stages/"} | {f"stages/{p.name}/" for p in STAGES.iterdir() if (p / "__init__.py").is_file()}
    assert set(table) == folders
    for folder, listed in table.items():
        present = {p.stem for p in (REPO / folder).glob("*.py") if p.stem not in ("__init__", "__main__")}
        assert listed == present, f"{folder}: the doc lists {sorted(listed - present)} that are not there and " \
                                  f"misses {sorted(present - listed)}"


@pytest.mark.parametrize("stage", ["evaluate", "export", "augment", "download", "label", "student", "teacher"])
def test_each_stage_module_has_one_entry_point_taking_typed_params(stage):
    tree = ast.parse((STAGES / f"{stage}.py").read_text())
    run = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    assert len(run) == 1
    assert any(a.annotation is not None and ast.unparse(a.annotation) == "Params" for a in run[0].args.args)
    assert not any(n.kwarg for n in ast.walk(tree) if isinstance(n, ast.arguments)), f"{stage} takes **kwargs"
