"""cascadevsr: latent-cascaded video super-resolution after SimpleGVR."""

from cascadevsr import compat as _compat

_compat.install()

__version__ = "0.1.0"
