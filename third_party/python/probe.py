"""Prints what the build needs to know about an interpreter, one `key=value` a line."""
import importlib.util
import os
import sys
import sysconfig


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else ""


pybind11_dir = _package_dir("pybind11")
cutlass_dir = _package_dir("cutlass_library")
print("version=%d.%d" % sys.version_info[:2])
print("ext_suffix=" + sysconfig.get_config_var("EXT_SUFFIX"))
print("include=" + sysconfig.get_paths()["include"])
print("pybind11_include=" + (os.path.join(pybind11_dir, "include") if pybind11_dir else ""))
print("cutlass_root=" + (os.path.join(cutlass_dir, "source") if cutlass_dir else ""))
