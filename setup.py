"""Build zerobatch: one installed package, `zerobatch`, its Cython batching core, and the CLI.

The repository keeps the design's top-level folders (`broker/`, `worker/`, `api/`, `csrc/`);
installed, they are `zerobatch.broker`, `zerobatch.worker`, `zerobatch.api`, and the compiled
aggregator is `zerobatch.broker._aggregator`. `benchmarks/`, `examples/` and `tests/` are the
lab and stay in the repository.

The compiled aggregator is built whenever this is built. Without Cython or a C compiler the
build fails and says why; ZEROBATCH_PURE_PYTHON=1 builds without it on purpose (the broker
then runs the pure-Python twin and logs so). pyproject.toml gives pip's isolated build the
Cython it needs.
"""

import os
import re

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

PACKAGE_DIRS = {
    "zerobatch": "zerobatch",
    "zerobatch.broker": "broker",
    "zerobatch.worker": "worker",
    "zerobatch.worker.compat": "worker/compat",
    "zerobatch.worker.handlers": "worker/handlers",
    "zerobatch.api": "api",
}


def read_version() -> str:
    """The version lives once, in zerobatch/__init__.py (which must not be imported here)."""
    with open(os.path.join(HERE, "zerobatch", "__init__.py"), encoding="utf-8") as handle:
        return re.search(r'^__version__ = "([^"]+)"', handle.read(), re.M).group(1)


def read_readme() -> str:
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
        return handle.read()


class LoudBuildExt(build_ext):
    """build_ext that turns a failed compile into a build failure with the fix in the message
    (setuptools would otherwise stop with a compiler trace and no hint)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure here has the same fix
            raise SystemExit(
                f"zerobatch: the compiled aggregator did not build ({exc}). Install a C compiler "
                "and the Python headers (Debian: apt-get install build-essential python3-dev), "
                "or set ZEROBATCH_PURE_PYTHON=1 to build without it.") from exc


def extensions() -> list:
    if os.environ.get("ZEROBATCH_PURE_PYTHON") == "1":
        print("zerobatch: ZEROBATCH_PURE_PYTHON=1, building without the compiled aggregator")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        raise SystemExit("zerobatch: Cython is needed to build the compiled aggregator "
                         "(pip install 'cython>=3.0'), or set ZEROBATCH_PURE_PYTHON=1 to build "
                         "without it") from exc
    from setuptools import Extension
    extension = Extension("zerobatch.broker._aggregator", ["csrc/_aggregator.pyx"],
                          include_dirs=["csrc"])
    return cythonize([extension], compiler_directives={"language_level": "3"}, quiet=True)


setup(
    name="zerobatch",
    version=read_version(),
    description="A PyTorch model server that serves TorchServe model archives on a ZeroMQ core",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Cython",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Intended Audience :: Developers",
    ],
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"zerobatch.broker": ["_aggregator.pyi"],
                  "zerobatch.api": ["openapi/*.json", "dashboard/*"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": LoudBuildExt},
    python_requires=">=3.10",
    # torch is deliberately absent: users install the build that fits their hardware (CPU or
    # their CUDA version); a worker whose handler needs it and cannot import it says so.
    install_requires=[
        "pyzmq>=25",
        "msgpack>=1.0",
        "falcon>=3.1",
        "uvicorn[standard]>=0.23",
        "pillow>=9",
        "numpy>=1.23",
        "pyyaml>=6",
        "prometheus_client>=0.17",
    ],
    # Tracing (zerobatch/tracing.py) is on when these are installed and OTEL_* says where
    # spans go: `pip install zerobatch[tracing]`.
    extras_require={"tracing": ["opentelemetry-sdk>=1.20",
                                "opentelemetry-exporter-otlp-proto-http>=1.20"],
                    # the Open Inference Protocol over gRPC (--grpc-address)
                    "grpc": ["grpcio>=1.60", "protobuf>=4.21"]},
    entry_points={"console_scripts": ["zerobatch=zerobatch.api.cli:main",
                                      "zerobatch-archiver=zerobatch.api.archiver:main",
                                      "zerobatch-torchserve=zerobatch.api.torchserve_cli:main"]},
)
