"""kernel_gateway_ext: Jupyter kernels and headless jobs in Docker containers."""
from ._version import __version__

__all__ = ["__version__"]
