"""Build zerobatch: the Python packages, the Cython batching core, and the `zerobatch` CLI.

The compiled aggregator is optional: when Cython or a C compiler is missing the build goes on
with the pure-Python twin, and says so. The broker logs which twin runs, and the test suite
fails when ZEROBATCH_REQUIRE_COMPILED=1 (set by `make test`) and the compiled one did not load.
"""

import os
import sys

from setuptools import find_packages, setup


def cython_extensions():
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        print("zerobatch: Cython not found; the pure-Python aggregator will run", file=sys.stderr)
        return []
    extension = Extension("broker._aggregator", ["csrc/_aggregator.pyx"], include_dirs=["csrc"])
    return cythonize([extension], compiler_directives={"language_level": "3"}, quiet=True)


setup(
    name="zerobatch",
    version="0.1.0",
    description="A PyTorch model server that serves TorchServe archives on a ZeroMQ core",
    # No `ts` package: inside a worker, worker/ts_alias.py answers TorchServe's `ts.*` imports.
    packages=find_packages(include=["zerobatch", "broker", "worker", "worker.*", "api",
                                    "benchmarks", "benchmarks.*"]),
    ext_modules=[] if os.environ.get("ZEROBATCH_NO_CYTHON") else cython_extensions(),
    python_requires=">=3.10",
    install_requires=[
        "pyzmq>=25",
        "msgpack>=1.0",
        "falcon>=3.1",
        "uvicorn[standard]>=0.23",
        "torch>=2.1,<3",
        "pillow>=9",
        "numpy>=1.23",
        "pyyaml>=6",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6", "ruff>=0.5",
                 "scikit-learn>=1.3"],
    },
    entry_points={"console_scripts": ["zerobatch=api.cli:main",
                                      "zerobatch-archiver=api.archiver:main"]},
)
