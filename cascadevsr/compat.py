"""Import shims that make torchvision, basicsr and pyiqa importable on a CPU-only torch.

Two known breakages, both outside our code:

* Every PyPI torchvision wheel is CUDA-linked. Beside a CPU-only torch its C extension silently fails to
  load, and ``torchvision._meta_registrations`` then registers fake kernels for operators that were never
  defined (``RuntimeError: operator torchvision::nms does not exist``). Stubbing the two registration
  modules lets the pure-Python parts (transforms, model definitions) import; the C++ ops stay unavailable.
* basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, renamed ``_functional_tensor`` in
  torchvision 0.17. We serve the old name as an alias of the new one.

Both are done by one import hook (a ``sys.meta_path`` finder) that ``import cascadevsr`` registers. It acts
only when torchvision (or the old module name) is first imported, so ``import cascadevsr`` itself stays
cheap (no torch import) and the import order of user code does not matter.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

_TV_REGISTRATION_MODULES = ("torchvision._meta_registrations", "torchvision._autograd_registrations")
_OLD_FUNCTIONAL_TENSOR = "torchvision.transforms.functional_tensor"
_NEW_FUNCTIONAL_TENSOR = "torchvision.transforms._functional_tensor"


def _torch_is_cpu_only() -> bool:
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


def _stub_registrations() -> None:
    if _torch_is_cpu_only():
        for name in _TV_REGISTRATION_MODULES:
            sys.modules.setdefault(name, types.ModuleType(name))


class _AliasLoader(importlib.abc.Loader):
    """Loads a module by importing another name and returning that module."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class _CompatFinder(importlib.abc.MetaPathFinder):
    """Applies the shims at the first import of torchvision; never loads anything itself otherwise."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" and "torchvision" not in sys.modules:
            _stub_registrations()
        elif fullname == _OLD_FUNCTIONAL_TENSOR and importlib.util.find_spec(_NEW_FUNCTIONAL_TENSOR):
            # Only reached when the old name is really gone: the normal finders come after us, but
            # torchvision's own package finder would find an existing file first via its __path__.
            if _module_file_exists(_OLD_FUNCTIONAL_TENSOR):
                return None
            return importlib.util.spec_from_loader(fullname, _AliasLoader(_NEW_FUNCTIONAL_TENSOR))
        return None


def _module_file_exists(fullname: str) -> bool:
    parent = fullname.rpartition(".")[0]
    package = sys.modules.get(parent) or importlib.import_module(parent)
    from importlib.machinery import PathFinder

    return PathFinder.find_spec(fullname, package.__path__) is not None


def install() -> None:
    """Register the compatibility import hook (idempotent). Must run before torchvision is imported."""
    if not any(isinstance(f, _CompatFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CompatFinder())
