"""The install is complete and the import shims make the reference libraries importable."""

from __future__ import annotations

import subprocess
import sys

import pytest

DESIGN_PACKAGES = ["torch", "ray", "webdataset", "decord", "albumentations", "basicsr", "pyiqa", "pandas",
                   "matplotlib", "av", "cv2", "pyarrow", "tqdm", "yaml", "scipy", "skimage"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_cascadevsr_does_not_import_torch():
    res = _run("import sys, cascadevsr; print('torch' in sys.modules, 'torchvision' in sys.modules)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


def test_basicsr_imports_after_cascadevsr_in_a_fresh_interpreter():
    code = (
        "import cascadevsr, basicsr\n"
        "from basicsr.data.degradations import circular_lowpass_kernel, random_add_gaussian_noise_pt\n"
        "from basicsr.utils.img_process_util import filter2D, USMSharp\n"
        "import torchvision.transforms.functional_tensor as ft\n"
        "print(basicsr.__version__, ft.__name__)"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1.4.2", "torchvision.transforms._functional_tensor"]


def test_torchvision_imports_first_when_cascadevsr_is_imported_first():
    res = _run("import cascadevsr, torchvision, torchvision.transforms.v2; print(torchvision.__version__)")
    assert res.returncode == 0, res.stderr


def test_pyiqa_imports_and_lists_its_metrics():
    res = _run("import cascadevsr, pyiqa; print(len(pyiqa.list_models()))")
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) > 50


@pytest.mark.parametrize("name", DESIGN_PACKAGES)
def test_every_declared_runtime_package_imports(name):
    res = _run(f"import cascadevsr, {name}")
    assert res.returncode == 0, res.stderr


def test_console_script_is_installed():
    res = subprocess.run([sys.executable, "-m", "cascadevsr", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("cascadevsr ")
