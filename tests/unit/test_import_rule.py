"""The import rule (README, Architecture): imports point one way, and light roles stay light.

    bench -> model_build -> worker -> lcm_fleet <- producer
                            worker -> lcm_fleet.consuming <- producer (lcm-webhooks)

``lcm_fleet.consuming`` (the queue screen, the guarded kombu transport, the class order) is
a role of its own: the kernel's part that may load Celery and kombu, imported by the two
roles that consume queues (worker, and producer's lcm-webhooks) and by nothing else of the
kernel. (a) Each package's modules, imported in a fresh interpreter, load none of the packages its
role must not need (``sys.modules`` after the imports). (b) No .py file of a package imports
from a package above it or beside it, at module level or inside a function (``ast``).
A failure lists the offending module or file:line.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lcm_fleet", "producer", "worker", "model_build", "bench")
#: Sub-packages that are roles of their own: their parent's checks skip them.
SUB_ROLES = {"lcm_fleet": ("lcm_fleet.consuming",)}

HEAVY = ("torch", "diffusers", "nncf", "optimum", "transformers")

#: The roles' packages, and what no light role loads.
ROLE_PACKAGES = {"producer", "worker", "model_build", "bench"}
NOT_LIGHT = {"openvino", "openvino_genai", "numpy", *HEAVY}

#: What importing each package's modules must not load (top-level names in sys.modules).
MUST_NOT_LOAD = {
    "lcm_fleet": {"celery", "kombu", *NOT_LIGHT, *ROLE_PACKAGES},
    # Celery and kombu, for the consumers of queues; nothing of any role, nothing heavy.
    "lcm_fleet.consuming": {*NOT_LIGHT, *ROLE_PACKAGES},
    "producer": {"worker", "model_build", "bench", "openvino", "openvino_genai", *HEAVY},
    # openvino_genai is loaded by the render process when it builds its pipelines.
    "worker": {"model_build", "bench", "producer", "openvino_genai", *HEAVY},
}

#: What each package's source must not import, anywhere in it.
MUST_NOT_IMPORT = {
    "lcm_fleet": {*ROLE_PACKAGES, "celery", "kombu", *SUB_ROLES["lcm_fleet"]},
    "lcm_fleet.consuming": ROLE_PACKAGES,
    "producer": {"worker", "model_build", "bench"},
    "worker": {"producer", "model_build", "bench"},
    "model_build": {"producer", "bench"},
}


def package_dir(package: str) -> Path:
    return ROOT.joinpath(*package.split("."))


def skipped(package: str) -> tuple[str, ...]:
    return SUB_ROLES.get(package, ())


def modules_of(package: str) -> list[str]:
    """Every module and sub-package of ``package`` but its sub-roles', found on disk
    (nothing is imported)."""
    names = [package]

    def walk(path: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(path)]):
            if prefix + info.name in skipped(package):
                continue
            names.append(prefix + info.name)
            if info.ispkg:
                walk(path / info.name, f"{prefix}{info.name}.")

    walk(package_dir(package), f"{package}.")
    return sorted(names)


def is_under(name: str, forbidden: set[str]) -> bool:
    """Whether module ``name`` is one of ``forbidden`` or inside one of them."""
    parts = name.split(".")
    return any(".".join(parts[:n]) in forbidden for n in range(1, len(parts) + 1))


def loaded_after_import(modules: list[str]) -> set[str]:
    """Top-level names in sys.modules after importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, f"importing {modules} failed:\n{out.stderr}"
    return set(json.loads(out.stdout.splitlines()[-1]))


def check_loads(package: str) -> None:
    forbidden = MUST_NOT_LOAD[package]
    modules = modules_of(package)
    if not loaded_after_import(modules) & forbidden:
        return
    # Something got loaded: name each module that loads it, one interpreter per module.
    offenders = []
    for name in modules:
        bad = loaded_after_import([name]) & forbidden
        if bad:
            offenders.append(f"  import {name} loads {', '.join(sorted(bad))}")
    raise AssertionError(f"{package} must not load {sorted(forbidden)}:\n" + "\n".join(offenders))


def imported_names(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, functions included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def static_offences(package: str) -> list[str]:
    forbidden = MUST_NOT_IMPORT[package]
    offences = []
    for path in sorted(package_dir(package).rglob("*.py")):
        rel = path.relative_to(ROOT)
        module = ".".join(rel.with_suffix("").parts)
        if is_under(module, set(skipped(package))):
            continue
        for line, name in imported_names(path, module):
            if is_under(name, forbidden):
                offences.append(f"  {rel}:{line}: imports {name}")
    return offences


def check_imports(package: str) -> None:
    offences = static_offences(package)
    forbidden = sorted(MUST_NOT_IMPORT[package])
    assert not offences, f"{package} must not import {forbidden}:\n" + "\n".join(offences)


def test_the_kernel_loads_nothing_heavy_and_no_role():
    # import lcm_fleet and every module under it; the artifact manifest among them.
    assert "lcm_fleet.artifact.manifest" in modules_of("lcm_fleet")
    check_loads("lcm_fleet")


def test_the_consuming_role_loads_no_role_and_nothing_heavy():
    assert {
        "lcm_fleet.consuming.screen",
        "lcm_fleet.consuming.broker_guard",
        "lcm_fleet.consuming.order",
    } <= set(modules_of("lcm_fleet.consuming"))
    assert not set(modules_of("lcm_fleet")) & set(modules_of("lcm_fleet.consuming"))
    check_loads("lcm_fleet.consuming")


def test_the_producer_loads_no_worker_build_or_openvino():
    assert {"producer.cli", "producer.api", "producer.download"} <= set(modules_of("producer"))
    check_loads("producer")


def test_the_worker_loads_no_torch_nncf_or_build_code_and_no_genai_at_import():
    assert {"worker.cli", "worker.consumer.tasks", "worker.render.pipeline"} <= set(
        modules_of("worker")
    )
    check_loads("worker")


def test_the_kernel_imports_no_role():
    check_imports("lcm_fleet")


def test_the_consuming_role_imports_no_role():
    check_imports("lcm_fleet.consuming")


def test_the_producer_imports_nothing_of_worker_build_or_bench():
    check_imports("producer")


def test_the_worker_imports_nothing_of_producer_build_or_bench():
    check_imports("worker")


def test_model_build_imports_nothing_of_producer_or_bench():
    check_imports("model_build")


def test_no_test_module_imports_another_test_module():
    # Shared fakes are conftest fixtures (tests/unit/conftest.py), never test_*.py imports.
    offences = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = path.relative_to(ROOT)
        module = ".".join(rel.with_suffix("").parts)
        for line, name in imported_names(path, module):
            if name.startswith("tests.") and name.rpartition(".")[2].startswith("test_"):
                offences.append(f"  {rel}:{line}: imports {name}")
    assert not offences, "a test module imports another test module:\n" + "\n".join(offences)


def test_the_rule_finds_an_offence(tmp_path):
    # The static check itself: a function-level and a relative import are both seen.
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from worker.cli import main\n\nfrom .. import cli\n")
    assert imported_names(source, "producer.sub.mod") == [(4, "producer"), (2, "worker.cli")]


def test_the_rule_sees_the_kernel_reach_for_its_consuming_role(tmp_path):
    # lcm_fleet.consuming loads kombu; a kernel module importing it, even in a function, is
    # an offence, and the sub-role's own modules are left to its own checks.
    forbidden = MUST_NOT_IMPORT["lcm_fleet"]
    assert is_under("lcm_fleet.consuming.screen", forbidden)
    assert is_under("kombu.transport.redis", forbidden)
    assert not is_under("lcm_fleet.contract", forbidden)
    assert "lcm_fleet.consuming.order" not in modules_of("lcm_fleet")
