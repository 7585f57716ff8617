"""Build script. The compiled extension `fastmim._C` is added here by the kernel work (DESIGN §6);
until then the package is pure Python and `fastmim.ops` runs its PyTorch references."""
from setuptools import setup

setup()
