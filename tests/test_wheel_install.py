"""The package as an image installs it: a wheel, installed non-editably into a fresh environment, run
from outside the source tree. Every service's start-up check and one classification must work there,
so a data file left out of the package data fails here and not in production.

Offline: the wheel is built without build isolation, and the fresh environment reuses this one's
installed dependencies through a .pth line (which does not process this environment's own .pth
files, so the editable install of the source tree stays invisible)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.conftest import ROOT

# What the Dockerfile copies into the image before `pip install .`.
SOURCES = ("pyproject.toml", "README.md", "shared", "services")
PACKAGES = ("shared", "services")


def shipped_data_files() -> set[str]:
    """Every file under the packages that is not Python source: the code opens them at run time."""
    return {
        p.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for p in (ROOT / package).rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(dist),
            str(src),
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = dist.glob("appeals-*.whl")
    return wheel


def fresh_environment(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_appeals_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=120,
    )
    return venv


def test_wheel_installs_and_every_service_starts_outside_the_source_tree(tmp_path, data_dir):
    wheel = build_wheel(tmp_path)
    packaged = set(zipfile.ZipFile(wheel).namelist())
    missing = shipped_data_files() - packaged
    assert not missing, f"data files left out of [tool.setuptools.package-data]: {sorted(missing)}"

    venv = fresh_environment(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "DATA_DIR": str(data_dir), "HOME": str(tmp_path)}

    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import services.cli, shared.city; print(services.cli.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"imported from {where}, not from the installed wheel"

    run = subprocess.run(
        [str(venv / "bin" / "appeals"), "check"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for service in ("api", "intake", "classifier", "router", "meetings", "notifier"):
        assert f"{service}: ok  {service}: app built" in run.stdout
    assert "classifier: ok  classifier: model" in run.stdout
    assert "city.facility.streetlight" in run.stdout, "the sample appeal is a broken streetlight"
