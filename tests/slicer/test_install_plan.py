"""The install plan of the engine environment: PyTorch comes from the PyTorch extension and is
never unpinned afterwards; nothing Slicer ships is changed (pip only ever runs in the engine's
own venv); an older Slicer is told which version it needs. The plan is also carried out for
real with this interpreter standing in for Slicer's Python: its packages stay exactly as they
were, and the engine starts from the new environment."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from SAM2RefineLib import dependencies as deps

SLICER_PYTHON = "/opt/Slicer-5.10/bin/PythonSlicer"
SLICER_SITE = ["/opt/Slicer-5.10/lib/Python/lib/python3.12/site-packages"]
# What a Slicer 5.10 ships (a few of them), and PyTorch as the PyTorch extension installed it.
SLICER_5_10 = {"numpy": "1.26.4", "pydicom": "2.4.4", "simpleitk": "2.4.1", "pillow": "10.4.0",
               "requests": "2.32.3", "setuptools": "70.0.0", "packaging": "24.1"}
TORCH = {"torch": "2.6.0+cu124", "torchvision": "0.21.0+cu124"}


def versions(table: dict[str, str]):
    return lambda name: table.get(name.lower().replace("_", "-"))


def plan_for(tmp_path, slicer=None, **kwargs) -> deps.InstallPlan:
    table = {**SLICER_5_10, **TORCH} if slicer is None else slicer
    return deps.plan(versions(table), venv=tmp_path / "engine", venv_versions=versions(table),
                     slicer_python=SLICER_PYTHON, slicer_site=SLICER_SITE,
                     **{"pytorch_extension": True, "version": (5, 10), "python": (3, 12),
                        **kwargs})


def names_in(args: list[str]) -> set[str]:
    from packaging.requirements import InvalidRequirement, Requirement

    found = set()
    for arg in args:
        with contextlib.suppress(InvalidRequirement):  # options and paths
            found.add(Requirement(arg).name.lower())
    return found


def test_pip_runs_only_in_the_engine_venv_with_torch_pinned(tmp_path):
    plan = plan_for(tmp_path)
    venv_python = str(deps.venv_python(tmp_path / "engine"))
    constraints = str(tmp_path / "engine" / deps.CONSTRAINTS_FILE)
    commands = [s.args for s in plan.steps if s.kind == "command"]
    assert commands[0] == [SLICER_PYTHON, "-m", "venv", "--without-pip",
                           str(tmp_path / "engine")]
    for args in commands[1:]:
        assert args[:3] == [venv_python, "-m", "pip"], args  # never Slicer's own pip
        assert args[args.index("-c") + 1] == constraints
        assert not names_in(args[3:]) & {"torch", "torchvision", "simpleitk"}
    assert all(SLICER_PYTHON not in args for args in commands[1:])
    assert not any(s.kind == "torch" for s in plan.steps)  # PyTorch is there already
    # Slicer's pydicom 2.4 stays; pydicom 3 goes into the venv, in front of it.
    pip = next(args for args in commands if "pydicom>=3.0,<4" in args)
    assert "numpy>=1.24,<3" not in pip  # Slicer's numpy fits: it is used, not replaced
    constraints_step = next(s for s in plan.steps if s.kind == "constraints")
    deps.write_file_step(constraints_step, plan, versions(TORCH))
    assert Path(constraints).read_text("utf-8") == "torch==2.6.0+cu124\ntorchvision==0.21.0+cu124\n"
    pth = next(s for s in plan.steps if s.kind == "pth")
    deps.write_file_step(pth, plan)
    expected = f"import site; site.addsitedir({SLICER_SITE[0]!r})\n"
    assert Path(pth.path).read_text("utf-8") == expected
    sam2 = next(s for s in plan.steps if s.title == "Building SAM 2")
    assert "--no-deps" in sam2.args and sam2.env == {"SAM2_BUILD_CUDA": "0"}
    text = plan.describe()
    assert str(tmp_path / "engine") in text and "PyTorch" in text
    assert "Slicer's packages are not changed" in text


def test_pytorch_comes_from_the_pytorch_extension_first(tmp_path):
    plan = plan_for(tmp_path, slicer=dict(SLICER_5_10))
    assert plan.steps[0].kind == "torch" and plan.steps[0].args == [
        "torch" + deps.TORCH_REQUIREMENT]
    kinds = [s.kind for s in plan.steps]
    assert kinds.index("torch") < kinds.index("constraints") < kinds.index("ready")
    with pytest.raises(deps.DependencyError, match="install 'PyTorch' from the Extensions"):
        plan_for(tmp_path, slicer=dict(SLICER_5_10), pytorch_extension=False)
    with pytest.raises(deps.DependencyError, match="torch is not installed"):
        deps.constraints_text(versions({}))


def test_an_older_slicer_is_told_which_version_it_needs(tmp_path):
    for version, python in (((5, 8), (3, 9)), ((5, 6), (3, 9))):
        with pytest.raises(deps.DependencyError) as caught:
            plan_for(tmp_path, version=version, python=python)
        message = str(caught.value)
        assert "needs 3D Slicer 5.10 or later" in message
        assert f"this is Slicer {version[0]}.{version[1]}" in message
    assert deps.unsupported_reason((5, 10), (3, 12)) is None
    assert "Python 3.10" in deps.unsupported_reason((5, 12), (3, 9))


def test_a_complete_environment_needs_nothing(tmp_path):
    engine = tmp_path / "engine"
    deps.venv_python(engine).parent.mkdir(parents=True)
    deps.venv_python(engine).write_text("")
    (engine / deps.READY_FILE).write_text("{}")
    everything = {**SLICER_5_10, **TORCH, "sam2": "1.1.0", "pydicom": "3.0.1"}  # venv's own
    for requirement in deps.ENGINE_REQUIREMENTS:
        from packaging.requirements import Requirement

        req = Requirement(requirement)
        everything.setdefault(req.name.lower(), next(
            (s.version for s in req.specifier if s.operator in (">=", "==")), "1.0"))
    plan = plan_for(tmp_path, slicer=everything)
    assert plan.missing == [] and plan.steps == [], plan.missing
    assert plan.describe() == "All requirements are installed."
    assert deps.engine_python(engine) == str(deps.venv_python(engine))


def _distributions(folder: str) -> list[tuple[str, str]]:
    import importlib.metadata

    return sorted((d.metadata["Name"], d.version)
                  for d in importlib.metadata.distributions(path=[folder]))


def test_carrying_out_the_plan_changes_nothing_of_slicers(tmp_path, tiny_checkpoint):
    """This interpreter plays Slicer's Python (it has torch, as the PyTorch extension leaves
    it); the plan is carried out, and pip is asked to replace the pinned torch."""
    from sam2refine import EngineSettings, LocalEngine

    site = deps.slicer_site_packages()
    before = {folder: _distributions(folder) for folder in site}
    engine = tmp_path / "engine"
    plan = deps.plan(venv=engine, slicer_python=sys.executable, pytorch_extension=True,
                     version=(5, 10))
    assert not any(s.kind == "torch" for s in plan.steps)
    deps.install_task(plan).run(poll_s=0.05)
    python = deps.engine_python(engine)
    assert python == str(deps.venv_python(engine))
    # pip in the venv keeps the installed torch, and refuses to change it.
    pip = [python, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "-c",
           str(engine / deps.CONSTRAINTS_FILE)]
    same = subprocess.run([*pip, "torch"], capture_output=True, text=True, timeout=300)
    assert same.returncode == 0 and "already satisfied" in same.stdout, same.stderr
    other = subprocess.run([*pip, "torch<2"], capture_output=True, text=True, timeout=300)
    assert other.returncode != 0
    assert {folder: _distributions(folder) for folder in site} == before  # nothing changed
    # The venv's own packages come first; Slicer's are seen after them.
    probe = subprocess.run([python, "-c", "import sys, torch; print(sys.prefix); "
                            "print(torch.__file__)"], capture_output=True, text=True,
                           timeout=300)
    prefix, torch_file = probe.stdout.split()
    assert Path(prefix) == engine and any(torch_file.startswith(f) for f in site)
    # And the engine starts from it.
    child = LocalEngine(EngineSettings(checkpoint=str(tiny_checkpoint), image_size=256,
                                       device="cpu"), python=python,
                        log_path=tmp_path / "engine.log")
    child.start()
    try:
        child.wait_ready(timeout=300)
        assert child.client().health()["status"] == "ok"
    finally:
        child.stop()
