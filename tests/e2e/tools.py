"""The third-party mail tools the end-to-end tests drive."""

from __future__ import annotations

import shutil

import pytest


def require_tool(name: str) -> str:
    """The tool's path; a missing one is a set-up fault, so fail rather than skip."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed; `make system-deps` installs it")
    return path
