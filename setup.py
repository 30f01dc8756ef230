"""Builds storecomp._native (C++17, pybind11).

io_uring support is compiled in when liburing's headers and library are found
(Debian: liburing-dev); the pread/pwrite thread pool is always built. No CUDA
is needed to build: CUDA is found at run time.
"""

import os
import sys
import sysconfig
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup


def _have_liburing() -> bool:
    if os.environ.get("STORECOMP_NO_LIBURING") == "1":
        return False
    include_dirs = ["/usr/include", "/usr/local/include", sysconfig.get_config_var("INCLUDEDIR") or ""]
    if not any(Path(d, "liburing.h").exists() for d in include_dirs if d):
        return False
    lib_dirs = ["/usr/lib", "/usr/local/lib", "/usr/lib64"]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        lib_dirs.append(f"/usr/lib/{multiarch}")
    return any(next(Path(d).glob("liburing.*"), None) for d in lib_dirs if Path(d).is_dir())


def _extension() -> Pybind11Extension:
    macros = []
    libraries = []
    if _have_liburing():
        macros.append(("STORECOMP_HAVE_LIBURING", "1"))
        libraries.append("uring")
    else:
        print("storecomp: liburing not found; building the thread-pool engine only", file=sys.stderr)
    extra = ["-O3", "-fvisibility=hidden", "-Wall", "-Wextra"]
    link = []
    sanitize = os.environ.get("STORECOMP_SANITIZE", "")
    if sanitize in ("1", "address"):
        extra += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
        link += ["-fsanitize=address,undefined"]
    elif sanitize == "thread":
        extra += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=thread"]
        link += ["-fsanitize=thread"]
    return Pybind11Extension(
        "storecomp._native",
        sorted(str(p) for p in Path("csrc").glob("*.cpp")),
        include_dirs=["csrc"],
        define_macros=macros,
        libraries=libraries,
        extra_compile_args=extra,
        extra_link_args=link + ["-pthread"],
        cxx_std=17,
    )


# Compile the C++ files in parallel (one job per core; STORECOMP_BUILD_JOBS=N overrides).
ParallelCompile("STORECOMP_BUILD_JOBS", default=0).install()

setup(ext_modules=[_extension()], cmdclass={"build_ext": build_ext})
