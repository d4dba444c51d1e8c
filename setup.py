"""Build the Cython fast path; everything else is declared in pyproject.toml.

The extension is optional at run time (``meshproxy.fastpath`` falls back to the
pure-Python twin), but a normal install builds it.
"""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("MESHPROXY_NO_EXTENSIONS") != "1":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("meshproxy._fastpath", ["meshproxy/_fastpath.pyx"], extra_compile_args=["-O2"])],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )

setup(ext_modules=ext_modules)
