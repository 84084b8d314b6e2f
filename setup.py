"""Package layout (metadata is in pyproject.toml).

The image build contexts (docker/) and kernelspecs (kernelspecs/) live at the top of the source tree;
in a wheel they are package data under kernel_gateway_ext/share/, where kernel_gateway_ext.resources
finds them with importlib.resources.
"""
from setuptools import find_packages, setup

SHARED = {"kernel_gateway_ext.share.docker": "docker", "kernel_gateway_ext.share.kernelspecs": "kernelspecs"}

setup(
    packages=find_packages(include=["kernel_gateway_ext", "kernel_gateway_ext.*"]) + list(SHARED),
    package_dir=SHARED,
    # every file of the shared folders, but never downloaded wheels or caches
    package_data={**{name: ["**/*"] for name in SHARED}, "kernel_gateway_ext.api.page": ["static/*"]},
    exclude_package_data={"kernel_gateway_ext.share.docker": ["kernel/wheels/*", "**/__pycache__/*"]},
)
