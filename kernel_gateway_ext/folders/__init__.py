"""Virtual folders: per-owner folders on the host, mounted into kernels under /home/work."""
from .manager import FolderManager, safe_relative_path

__all__ = ["FolderManager", "safe_relative_path"]
