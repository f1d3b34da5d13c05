"""The engine's Python requirements inside Slicer: what is missing and how to install it.

The module itself loads without any of these; they are installed on first use, after the
user agreed, as subprocesses (never on the UI thread):

1. PyTorch the way the PyTorch extension installs it (light-the-torch picks the build that
   matches the computer's NVIDIA driver, or the CPU build);
2. the engine's and SAM 2's other requirements with pip (never Slicer's own SimpleITK);
3. SAM 2 itself (`sam2==1.1.0`, an sdist) built without its optional CUDA extension and
   without dependencies, so pip cannot replace the PyTorch build chosen in step 1;
4. only when DICOM-SEG export is first used: highdicom and pydicom 3.

The engine's server requirements (fastapi, uvicorn) are never installed in Slicer.

A restart is needed only when a package that this Slicer session already imported (numpy,
Pillow, ...) was replaced.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

# Pinned like the engine's pyproject.toml (`tests/slicer/test_module_files.py` checks it).
TORCH_REQUIREMENTS = ("torch>=2.5.1,<2.15", "torchvision>=0.20.1")
SAM2_REQUIREMENT = "sam2==1.1.0"
PIP_REQUIREMENTS = (
    "numpy>=1.24,<3",
    "pynrrd>=1.0,<2",
    "slicerio>=1.1,<2",
    "tqdm>=4.66.1,<5",  # >=4.66.1 for SAM 2
    "requests>=2.31,<3",  # the remote client
    "monai>=1.4,<2",  # the prompt generator (U-Net)
    "scipy>=1.10,<2",  # MONAI's surface distances (NSD in evaluation)
    "safetensors>=0.4,<1",  # adapter files
    "hydra-core>=1.3.2",  # the rest are SAM 2's own requirements
    "iopath>=0.1.10",
    "pillow>=9.4.0",
)
# Only for DICOM-SEG export, installed when it is first used: pydicom 3 replaces the pydicom
# 2.x that Slicer releases up to 5.10 bundle, which their DICOM module may not work with.
DICOM_SEG_REQUIREMENTS = (
    "highdicom>=0.28,<0.30",
    "pydicom>=3.0,<4",
    "pylibjpeg>=2.0,<3",
    "pylibjpeg-openjpeg>=2.3,<3",
)
PROVIDED_BY_SLICER = ("SimpleITK",)  # Slicer's build has its own IO: never replaced
# Used outside Slicer only: `sam2refine serve`, and the prompts-file schema of the CLI (pydantic)
SERVER_ONLY = ("fastapi", "uvicorn", "pydantic")
LIGHT_THE_TORCH = "light-the-torch>=0.5"
# distribution -> module it is imported as (for the restart check)
_MODULES = {"pillow": "PIL", "hydra-core": "hydra", "pynrrd": "nrrd",
            "light-the-torch": "light_the_torch"}

VersionOf = Callable[[str], "str | None"]


class DependencyError(RuntimeError):
    """Dependencies cannot be installed (no PyTorch extension, pip failed, cancelled)."""


def installed_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _split(requirement: str) -> tuple[str, str]:
    from packaging.requirements import Requirement

    parsed = Requirement(requirement)
    return parsed.name, str(parsed.specifier)


def satisfied(requirement: str, version_of: VersionOf = installed_version) -> bool:
    """Whether the installed version (if any) meets `requirement`."""
    from packaging.specifiers import SpecifierSet

    name, spec = _split(requirement)
    version = version_of(name)
    return version is not None and SpecifierSet(spec).contains(version, prereleases=True)


def missing(requirements: Iterable[str], version_of: VersionOf = installed_version) -> list[str]:
    """The requirements that are not installed, or installed in a version that does not fit."""
    return [r for r in requirements if not satisfied(r, version_of)]


@dataclass
class InstallStep:
    """One subprocess: `python -m <args>` with extra environment variables."""

    title: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class InstallPlan:
    """What to install and whether Slicer must restart afterwards."""

    missing: list[str]
    steps: list[InstallStep]
    restart_needed: bool

    def describe(self) -> str:
        """Text for the consent dialog."""
        if not self.steps:
            return "All requirements are installed."
        lines = [f"Python packages to install: {', '.join(self.missing)}.", "", "Commands:"]
        lines += [f"  python -m {' '.join(s.args)}" for s in self.steps]
        if self.restart_needed:
            lines += ["", "Slicer must be restarted afterwards (packages it already loaded "
                          "are replaced)."]
        return "\n".join(lines)


def plan(version_of: VersionOf = installed_version,
         loaded_modules: Mapping[str, object] | None = None,
         pytorch_extension: bool | None = None, dicom_seg: bool = False) -> InstallPlan:
    """The install steps for whatever is missing (an empty plan when nothing is); with
    `dicom_seg` also what DICOM-SEG export needs."""
    loaded = sys.modules if loaded_modules is None else loaded_modules
    if pytorch_extension is None:
        pytorch_extension = pytorch_extension_available()
    need_torch = missing(TORCH_REQUIREMENTS, version_of)
    need_pip = missing(PIP_REQUIREMENTS + (DICOM_SEG_REQUIREMENTS if dicom_seg else ()),
                       version_of)
    need_sam2 = missing([SAM2_REQUIREMENT], version_of)
    steps: list[InstallStep] = []
    if need_torch:
        if not pytorch_extension:
            raise DependencyError(
                "SAM2Refine needs the PyTorch extension to install PyTorch: install "
                "'PyTorch' from the Extensions Manager, restart Slicer and try again.")
        if not satisfied(LIGHT_THE_TORCH, version_of):
            steps.append(InstallStep("Installing light-the-torch (PyTorch installer)",
                                     ["pip", "install", LIGHT_THE_TORCH]))
        steps.append(InstallStep("Installing PyTorch (this may take several minutes)",
                                 ["light_the_torch", "install", *TORCH_REQUIREMENTS]))
    if need_pip:
        steps.append(InstallStep("Installing the engine's requirements",
                                 ["pip", "install", *need_pip]))
    if need_sam2 or need_torch:
        steps.append(InstallStep("Installing SAM 2", [
            "pip", "install", "--no-deps", "--no-build-isolation", SAM2_REQUIREMENT],
            {"SAM2_BUILD_CUDA": "0"}))
    replaced = [r for r in need_torch + need_pip + need_sam2 if version_of(_split(r)[0])]
    restart = any(_module_of(_split(r)[0]) in loaded for r in replaced)
    return InstallPlan(need_torch + need_pip + need_sam2, steps, restart)


def _module_of(distribution: str) -> str:
    return _MODULES.get(distribution.lower(), distribution.lower().replace("-", "_"))


def pytorch_extension_available() -> bool:
    """Whether Slicer's PyTorch extension (module PyTorchUtils) is installed."""
    import importlib.util

    return importlib.util.find_spec("PyTorchUtils") is not None


def python_executable() -> str:
    """Slicer's Python (PythonSlicer) when running in Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def run(plan_: InstallPlan, log: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None, python: str | None = None) -> bool:
    """Run the plan's steps one after the other; returns whether a restart is needed."""
    python = python or python_executable()
    total = len(plan_.steps)
    for index, step in enumerate(plan_.steps):
        if cancel is not None and cancel.is_set():
            raise DependencyError("Installation cancelled; run it again to finish it.")
        if log:
            log(step.title)
        if progress:
            progress(index, total)
        _run_step(python, step, log, cancel)
    if progress:
        progress(total, total)
    importlib.invalidate_caches()
    return plan_.restart_needed


def _run_step(python: str, step: InstallStep, log, cancel) -> None:
    env = {**os.environ, **step.env}
    command = [python, "-m", *step.args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
    assert process.stdout is not None
    for line in process.stdout:
        if log:
            log(line.rstrip())
        if cancel is not None and cancel.is_set():
            process.terminate()
            process.wait()
            raise DependencyError(f"Cancelled during: {step.title}. Run it again to finish.")
    if process.wait() != 0:
        raise DependencyError(
            f"{step.title} failed (exit status {process.returncode}): "
            f"{' '.join(command)}. See the log above; check the network connection.")
