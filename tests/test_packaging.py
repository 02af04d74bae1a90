"""The package as a user gets it: a wheel that builds offline, installs into a fresh venv and runs."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import genladder

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    # no build isolation: the build uses this environment's setuptools, so no network is needed
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("genladder-*.whl")
    assert wheel.name.startswith(f"genladder-{genladder.__version__}-")  # the version's one source
    names = zipfile.ZipFile(wheel).namelist()
    for packaged in ("genladder/py.typed", "genladder/evaluate/mnist_classifier.safetensors",
                     "genladder/evaluate/mnist_classifier_second.safetensors"):
        assert packaged in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    # the dependencies (torch, …) come from this environment's site-packages, added after the venv's own
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    version = subprocess.run([str(venv / "bin" / "genladder"), "--version"], check=True, capture_output=True,
                             text=True, cwd=tmp_path)
    assert version.stdout.strip() == f"genladder {genladder.__version__}"
    where = subprocess.run([str(python), "-c", "import genladder; print(genladder.__file__)"], check=True,
                           capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv)  # the installed wheel, not the checkout
