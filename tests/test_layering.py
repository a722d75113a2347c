"""The library (``distill/``) never imports a stage package (``teacher``, ``student``, ``pseudolabel``);
only the launchers named below may, and they only call the stage's ``main``."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("teacher", "student", "pseudolabel")
# Thin launchers of the user commands (``accelerate launch distill/train_teacher.py`` ...): the only
# files in distill/ that import a stage package.
LAUNCHERS = {"train_teacher.py", "train_student.py", "pseudolabel.py"}
LIBRARY = sorted(p for p in (ROOT / "distill").rglob("*.py") if p.relative_to(ROOT / "distill").as_posix() not in LAUNCHERS)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` / ``from ... import`` statement names, function-local ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def test_imported_modules_sees_every_kind_of_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom a.b import c\n\ndef f():\n    import teacher.train\n    from . import x\n")
    assert [m for _, m in imported_modules(probe)] == ["os", "a.b", "teacher.train", "."]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_library_never_imports_a_stage_package(path):
    bad = [f"{path.relative_to(ROOT)}:{line}: {module}" for line, module in imported_modules(path)
           if module.split(".")[0] in STAGES or module.startswith(".")]
    assert not bad, "the library imports a stage package (or imports relatively): " + ", ".join(bad)


def test_launchers_exist_and_only_call_a_stage_main():
    for name in LAUNCHERS:
        modules = [m for _, m in imported_modules(ROOT / "distill" / name)]
        assert any(m.split(".")[0] in STAGES for m in modules), name
        assert len((ROOT / "distill" / name).read_text().splitlines()) < 25, f"{name} is not a thin launcher"


def test_importing_each_library_module_loads_no_stage_package():
    """In a fresh interpreter, so nothing imported by other tests hides a dependency."""
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in LIBRARY]
    modules = [m.removesuffix(".__init__") for m in modules]
    code = (
        "import importlib, json, sys\n"
        f"stages = {STAGES!r}\n"
        "loaded = {}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    loaded[name] = sorted(m for m in sys.modules if m.split('.')[0] in stages)\n"
        "print(json.dumps(loaded))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(loaded) == len(modules)
    assert all(not stages for stages in loaded.values()), {m: s for m, s in loaded.items() if s}


def test_console_scripts_name_the_launchers_mains():
    """pyproject's console scripts give the same commands after ``pip install``: each entry point is
    the ``main`` a launcher in distill/ calls, or the command module's own."""
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    launched = {"train_teacher.py": "teacher.train:main", "pseudolabel.py": "pseudolabel.cli:main",
                "train_student.py": "student.train:main"}
    for launcher, target in launched.items():
        module = target.split(":")[0]
        assert f"from {module} import main" in (ROOT / "distill" / launcher).read_text(), launcher
        assert target in scripts.values(), target
    for command in ("evaluate", "release", "export"):  # the library's own commands: the module is the script
        assert 'if __name__ == "__main__":\n    sys.exit(main())' in (ROOT / "distill" / f"{command}.py").read_text()
        assert f"distill.{command}:main" in scripts.values(), command
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name)), target
