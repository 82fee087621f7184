"""Build the Cython extension mailfast._parser.

Switches (environment variables):
  MAILFAST_ANNOTATE=1   write an HTML annotation next to the .pyx
  MAILFAST_DEBUG=1      compile with invariant checks (CYTHON_DEBUG macro)
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("MAILFAST_DEBUG") == "1"

extension = Extension(
    "mailfast._parser",
    ["mailfast/_parser.pyx"],
    define_macros=[("MAILFAST_DEBUG", "1")] if debug else [],
    extra_compile_args=["-O2"] if not debug else ["-O0", "-g"],
)

setup(
    ext_modules=cythonize(
        [extension],
        language_level=3,
        annotate=os.environ.get("MAILFAST_ANNOTATE") == "1",
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": debug,
        },
    ),
)
