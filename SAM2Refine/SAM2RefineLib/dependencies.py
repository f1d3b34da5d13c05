"""What the engine needs on this computer, and how it gets there without changing Slicer.

Slicer's own process runs only the module, which needs nothing beyond what Slicer ships
(numpy, requests, SimpleITK). The engine runs in a process of its own (see `connection.py`),
with an environment of its own:

1. PyTorch goes into Slicer's Python through the PyTorch extension
   (`PyTorchUtilsLogic().installTorch`), which picks the build that matches this computer's
   GPU driver and is shared with other extensions. Slicer ships no torch: nothing is replaced.
2. The engine environment is a venv made from Slicer's Python in the user's cache folder
   (`<cache>/slicer-engine/py3.12`). A `.pth` file lets it see Slicer's packages *after* its
   own, so torch is not downloaded twice while pydicom 3 (say) can shadow Slicer's pydicom 2.
3. pip installs the engine's requirements into that venv only, with a constraints file that
   pins the installed torch and torchvision: pip can never replace the PyTorch build of step 1,
   and it cannot uninstall anything of Slicer's (those live outside the venv).
4. SAM 2 itself (`sam2==1.1.0`, an sdist) is built without its optional CUDA extension and
   without dependencies, against that torch.

Only the engine process uses the venv; `tests/slicer/test_install_plan.py` checks the plan.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

MINIMUM_SLICER = (5, 10)  # Python 3.12; sam2, monai and pydicom 3 need Python >= 3.10
MINIMUM_PYTHON = (3, 10)
TORCH_REQUIREMENT = ">=2.5.1,<2.15"  # what PyTorchUtils installs (pyproject: torch>=2.5,<2.15)
TORCH_DISTRIBUTIONS = ("torch", "torchvision")
SAM2_REQUIREMENT = "sam2==1.1.0"
# Pinned like the engine's pyproject.toml (`tests/slicer/test_module_files.py` checks it).
ENGINE_REQUIREMENTS = (
    "numpy>=1.24,<3",
    "pynrrd>=1.0,<2",
    "slicerio>=1.1,<2",
    "tqdm>=4.66.1,<5",  # >=4.66.1 for SAM 2
    "requests>=2.31,<3",
    "monai>=1.4,<2",  # the prompt generator (U-Net)
    "scipy>=1.10,<2",
    "safetensors>=0.4,<1",
    "fastapi>=0.110,<1",  # the engine is a server, also on this computer
    "uvicorn>=0.29,<1",
    "pydantic>=2.5,<3",  # the server's request bodies and the prompts-file schema
    "highdicom>=0.28,<0.30",  # DICOM-SEG export
    "pydicom>=3.0,<4",
    "pylibjpeg>=2.0,<3",
    "pylibjpeg-openjpeg>=2.3,<3",
    "hydra-core>=1.3.2",  # the rest are SAM 2's own requirements
    "iopath>=0.1.10",
    "pillow>=9.4.0",
    "setuptools>=61",  # building the SAM 2 sdist without build isolation
)
PROVIDED_BY_SLICER = ("SimpleITK",)  # Slicer's own build (with its IO plugins) serves the engine
SLICER_SITE_FILE = "slicer-site-packages.pth"
CONSTRAINTS_FILE = "constraints.txt"
READY_FILE = "sam2refine-engine.json"  # written last: the environment is complete

VersionOf = Callable[[str], "str | None"]


class DependencyError(RuntimeError):
    """The engine's requirements cannot be installed (old Slicer, no PyTorch extension, pip
    failed, cancelled); the message says what to do."""


def slicer_version() -> tuple[int, int] | None:
    """(major, minor) of the running Slicer; None outside the Slicer application."""
    try:
        import slicer

        return int(slicer.app.majorVersion), int(slicer.app.minorVersion)
    except (ImportError, AttributeError):
        return None


def unsupported_reason(version: tuple[int, int] | None = None,
                       python: tuple[int, int] | None = None) -> str | None:
    """Why SAM2Refine cannot run here (one line), or None when it can."""
    version = slicer_version() if version is None else version
    python = tuple(sys.version_info[:2]) if python is None else python
    needed = ".".join(str(v) for v in MINIMUM_SLICER)
    if version is not None and tuple(version) < MINIMUM_SLICER:
        return (f"SAM2Refine needs 3D Slicer {needed} or later; this is Slicer "
                f"{version[0]}.{version[1]}. Install the current Slicer from download.slicer.org.")
    if tuple(python) < MINIMUM_PYTHON:
        return (f"SAM2Refine needs Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or later "
                f"(3D Slicer {needed} or later); this Slicer has Python {python[0]}.{python[1]}.")
    return None


# ----- where things are ----------------------------------------------------------------------
def cache_folder() -> Path:
    """The engine's per-user cache (weights, the engine environment, its log)."""
    from sam2refine import cache_dir

    return cache_dir()


def engine_folder(python_version: tuple[int, int] | None = None) -> Path:
    """The engine environment for this Python version (one per Slicer Python, side by side)."""
    major, minor = python_version or sys.version_info[:2]
    return cache_folder() / "slicer-engine" / f"py{major}.{minor}"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_site_packages(venv: Path) -> Path:
    """Where packages installed into `venv` go (same Python version as this process)."""
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv),
                                                    "platbase": str(venv)}))


def slicer_site_packages() -> list[str]:
    """The site-packages folders of this (Slicer's) Python, that the venv sees after its own."""
    folders = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    return list(dict.fromkeys(str(Path(f)) for f in folders if Path(f).is_dir()))


def python_executable() -> str:
    """Slicer's Python (its `PythonSlicer` launcher, which sets up its environment) when
    running in Slicer, else this interpreter."""
    import shutil

    return shutil.which("PythonSlicer") or sys.executable


def engine_python(venv: Path | None = None) -> str | None:
    """The engine environment's interpreter once the environment is complete, else None."""
    venv = venv or engine_folder()
    python = venv_python(venv)
    return str(python) if python.is_file() and (venv / READY_FILE).is_file() else None


# ----- what is installed ---------------------------------------------------------------------
def versions_in(folders: Iterable[str | Path]) -> VersionOf:
    """version_of(distribution) for packages in `folders`, earlier folders first (how the
    engine environment resolves them), read without running that environment's Python."""
    paths = [str(f) for f in folders]

    def version_of(name: str) -> str | None:
        key = _normal(name)
        for path in paths:
            for dist in importlib.metadata.distributions(path=[path]):
                if _normal(dist.metadata["Name"] or "") == key:
                    return dist.version
        return None
    return version_of


def installed_version(distribution: str) -> str | None:
    """Version of a distribution in Slicer's own Python, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def satisfied(requirement: str, version_of: VersionOf) -> bool:
    """Whether the version `version_of` finds (if any) meets `requirement`."""
    from packaging.requirements import Requirement

    parsed = Requirement(requirement)
    version = version_of(parsed.name)
    return version is not None and parsed.specifier.contains(version, prereleases=True)


def missing(requirements: Iterable[str], version_of: VersionOf) -> list[str]:
    return [r for r in requirements if not satisfied(r, version_of)]


def pytorch_extension_available() -> bool:
    """Whether Slicer's PyTorch extension (module PyTorchUtils) is installed."""
    import importlib.util

    return importlib.util.find_spec("PyTorchUtils") is not None


# ----- the plan ------------------------------------------------------------------------------
@dataclass
class InstallStep:
    """One step: "torch" (PyTorchUtils in Slicer's process), "command" (a subprocess),
    "pth" / "constraints" (a file written in the venv)."""

    title: str
    kind: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    path: str = ""


@dataclass
class InstallPlan:
    """What to install, where, and the steps that do it."""

    missing: list[str]
    steps: list[InstallStep]
    venv: Path
    slicer_site: list[str]

    def describe(self) -> str:
        """What the consent dialog lists: what, where, and the commands."""
        if not self.steps:
            return "All requirements are installed."
        lines = ["To be installed:"]
        if any(s.kind == "torch" for s in self.steps):
            lines.append(f"  PyTorch ({TORCH_REQUIREMENT}, the build for this computer's GPU) "
                         "into Slicer's Python, by the PyTorch extension.")
        lines.append(f"  Into the engine's own environment {self.venv} (Slicer's packages are "
                     f"not changed): {', '.join(self.missing) or 'nothing more'}.")
        lines += ["", "Steps:"]
        for step in self.steps:
            command = f": {' '.join(step.args)}" if step.kind == "command" else (
                f": {step.path}" if step.path else "")
            lines.append(f"  {step.title}{command}")
        return "\n".join(lines)


def plan(slicer_versions: VersionOf = installed_version, venv: Path | None = None,
         venv_versions: VersionOf | None = None, slicer_python: str | None = None,
         slicer_site: list[str] | None = None, pytorch_extension: bool | None = None,
         version: tuple[int, int] | None = None, python: tuple[int, int] | None = None,
         ) -> InstallPlan:
    """The steps that make the engine environment complete (none when it is). Raises
    `DependencyError` when it cannot be done here (old Slicer, no PyTorch extension)."""
    reason = unsupported_reason(version, python)
    if reason:
        raise DependencyError(reason)
    venv = Path(venv or engine_folder(python))
    slicer_site = slicer_site_packages() if slicer_site is None else list(slicer_site)
    own_site = venv_site_packages(venv)
    if venv_versions is None:
        venv_versions = versions_in([own_site, *slicer_site])
    slicer_python = slicer_python or python_executable()
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check",
           "--no-input", "-c", str(venv / CONSTRAINTS_FILE)]
    steps: list[InstallStep] = []
    need_torch = missing([f"torch{TORCH_REQUIREMENT}"], slicer_versions)
    if need_torch:
        if pytorch_extension is None:
            pytorch_extension = pytorch_extension_available()
        if not pytorch_extension:
            raise DependencyError(
                "SAM2Refine needs the PyTorch extension to install PyTorch: install 'PyTorch' "
                "from the Extensions Manager, restart Slicer and try again.")
        steps.append(InstallStep("Installing PyTorch (the PyTorch extension; several minutes)",
                                 "torch", args=[f"torch{TORCH_REQUIREMENT}"]))
    if not venv_python(venv).is_file():
        steps.append(InstallStep("Creating the engine environment", "command",
                                 [slicer_python, "-m", "venv", "--without-pip", str(venv)]))
    steps.append(InstallStep("Letting the engine environment see Slicer's packages", "pth",
                             path=str(own_site / SLICER_SITE_FILE)))
    steps.append(InstallStep("Pinning the installed PyTorch", "constraints",
                             path=str(venv / CONSTRAINTS_FILE)))
    need = missing(ENGINE_REQUIREMENTS, venv_versions)
    if need:
        steps.append(InstallStep("Installing the engine's requirements", "command",
                                 [*pip, *need]))
    need_sam2 = missing([SAM2_REQUIREMENT], venv_versions)
    if need_sam2 or need_torch:
        steps.append(InstallStep("Building SAM 2", "command", [
            *pip, "--no-deps", "--no-build-isolation", SAM2_REQUIREMENT],
            {"SAM2_BUILD_CUDA": "0"}))
    ready = (venv / READY_FILE).is_file()
    if not (need_torch or need or need_sam2) and ready:
        return InstallPlan([], [], venv, slicer_site)
    steps.append(InstallStep("Marking the engine environment complete", "ready",
                             path=str(venv / READY_FILE)))
    return InstallPlan(need_torch + need + need_sam2, steps, venv, slicer_site)


# ----- the file steps ------------------------------------------------------------------------
def pth_text(slicer_site: Iterable[str]) -> str:
    """The `.pth` lines that add Slicer's site-packages after the venv's own (their `.pth`
    files processed, as `--system-site-packages` would)."""
    return "".join(f"import site; site.addsitedir({str(folder)!r})\n" for folder in slicer_site)


def constraints_text(version_of: VersionOf = installed_version) -> str:
    """`torch==<installed>` (and torchvision), so pip keeps the PyTorch extension's build."""
    lines = []
    for name in TORCH_DISTRIBUTIONS:
        version = version_of(name)
        if version is None:
            raise DependencyError(f"{name} is not installed in Slicer's Python; install it with "
                                  "the PyTorch extension first.")
        lines.append(f"{name}=={version}\n")
    return "".join(lines)


def write_file_step(step: InstallStep, plan_: InstallPlan,
                    version_of: VersionOf = installed_version) -> None:
    """Carry out a "pth", "constraints" or "ready" step."""
    path = Path(step.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if step.kind == "pth":
        text = pth_text(plan_.slicer_site)
    elif step.kind == "constraints":
        text = constraints_text(version_of)
    elif step.kind == "ready":
        text = json.dumps({"python": sys.version.split()[0], "sam2": SAM2_REQUIREMENT,
                           "torch": version_of("torch")}) + "\n"
    else:
        raise ValueError(f"Not a file step: {step.kind}")
    path.write_text(text, encoding="utf-8")


def install_task(plan_: InstallPlan, log: Callable[[str], None] | None = None):
    """The plan's steps except PyTorch (the PyTorch extension installs it in Slicer's process
    first, see the widget) as one `Task`: programs run as watched subprocesses, never waited
    on; the file steps are written in between. The last step marks the environment ready."""
    from SAM2RefineLib.processes import processSteps
    from SAM2RefineLib.tasks import Task

    steps = [s for s in plan_.steps if s.kind != "torch"]

    def body(task):
        for n, step in enumerate(steps):
            task.report(n * 1000 // len(steps), 1000, step.title)
            if log is not None:
                log(step.title)
            if step.kind == "command":
                span = (n / len(steps), (n + 1) / len(steps))
                yield from processSteps(task, step.args, step.env, log, span)
            else:
                write_file_step(step, plan_)
            yield
        return f"The engine's requirements are installed in {plan_.venv}."
    return Task("Installing the engine's requirements", body, cancellable=True)
