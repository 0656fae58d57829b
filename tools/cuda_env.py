"""Where the CUDA toolkit and pip's CUDA wheels live; shared by setup.py and `make cmake-build`.

`python tools/cuda_env.py` prints the CMake arguments that let torch's CMake config find a
toolkit whose nvcc on PATH is a wrapper script and whose cuBLAS/NVRTC come from pip wheels.
"""
import glob
import os
import re
import shutil
import sysconfig


def _cuda_home_candidates():
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        yield os.path.dirname(os.path.dirname(real))
        # Some installs put a shell wrapper on PATH that execs the real nvcc.
        try:
            with open(real, "rb") as f:
                head = f.read(4096).decode("utf-8", "ignore")
            yield from (m.group(1) for m in re.finditer(r"(/\S+)/bin/nvcc", head))
        except OSError:
            pass
    yield from sorted(glob.glob("/usr/local/cuda*"), reverse=True)


def find_cuda_home():
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            return os.environ[env]
    for root in _cuda_home_candidates():
        if os.path.exists(os.path.join(root, "bin", "nvcc")) and os.path.exists(
            os.path.join(root, "include", "cuda_runtime.h")
        ):
            return root
    return None


def pip_cuda_dirs(sub):
    """site-packages/nvidia/cu*/<sub> of pip's CUDA wheels (headers and libraries a bare toolkit may lack)."""
    site = sysconfig.get_paths()["purelib"]
    return [d for d in glob.glob(os.path.join(site, "nvidia", "cu*", sub)) if os.path.isdir(d)]


def cmake_args():
    home = find_cuda_home()
    if not home:
        return []
    args = [f"-DCUDAToolkit_ROOT={home}", f"-DCUDA_TOOLKIT_ROOT_DIR={home}"]
    for lib_dir in pip_cuda_dirs("lib"):
        nvrtc = sorted(glob.glob(os.path.join(lib_dir, "libnvrtc.so*")))
        if nvrtc:
            args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}")
    return args


if __name__ == "__main__":
    print(" ".join(cmake_args()))
