"""The one list of native extensions, their sources and compiler flags.

Read by two front doors: cc/kernels/BUILD.bazel (Bazel) and tools/build_kernels.py (no Bazel, e.g.
a GPU machine). The tool parses this file as Python literals, so keep it data only: no calls,
no loads, no comprehensions.

Sources live per op, as in mamba_ssm's csrc: cc/kernels/<op>/ holds the op's CPU kernel, its CUDA
kernels and their pybind11 fronts, and headers shared by both backends; cc/kernels/common/ holds what
every kernel uses. Each extension becomes the Python module `cc.kernels.<name>` (the module path
does not follow the source folder):
  srcs       C++ sources of the pybind11 module (host compiler)
  cuda_srcs  CUDA sources (nvcc); an extension with any is built only where CUDA is found
  hdrs       headers its sources include (workspace-relative includes: "cc/kernels/...")
  cutlass    True if the CUDA sources include CUTLASS/CuTe headers
"""

# Host C++ flags (also passed to nvcc's host compiler through -Xcompiler).
CXX_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast"]

LINK_FLAGS = ["-fopenmp"]

# nvcc flags for .cu files (the build adds -Xcompiler=-fPIC, -ccbin and the -gencode flags).
# -Xptxas=-v: per-kernel registers, shared memory, stack and spills, kept by both front doors and
# checked by //cc/kernels:ptxas_report_test (tools/ptxas_report.py).
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "--extended-lambda", "-lineinfo", "-Xptxas=-v"]

# Default GPU targets: Ampere (sm_80) and Hopper with wgmma/TMA (sm_90a).
# Override without editing: VISIONSSM_CUDA_ARCHS="90a" (both front doors read it).
CUDA_ARCHS = ["80", "90a"]

# Shared by every kernel (cc/kernels/common/): argument checks, thread scheduling, the target_clones
# macros, vector types, exp/softplus/sigmoid, per-thread scratch.
COMMON_HDRS = [
    "common/check.h",
    "common/dtype.h",
    "common/params_dict.h",
    "common/parallel.h",
    "common/clones.h",
    "common/simd.h",
    "common/fast_math.h",
    "common/scratch.h",
]

EXTENSIONS = {
    "hello_cpu": {
        "srcs": ["hello_cpu.cc"],
        "cuda_srcs": [],
        "hdrs": [],
        "cutlass": False,
    },
    "selective_scan_cpu": {
        "srcs": ["selective_scan/selective_scan_cpu.cc"],
        "cuda_srcs": [],
        "hdrs": [
            "selective_scan/selective_scan_n1_avx2.h",
            "selective_scan/selective_scan_params.h",
            "selective_scan/selective_scan_params_dict.h",
        ],
        "cutlass": False,
    },
    "ssd_cpu": {
        "srcs": ["ssd/ssd_cpu.cc"],
        "cuda_srcs": [],
        "hdrs": ["ssd/ssd_params.h", "ssd/ssd_params_dict.h"],
        "cutlass": False,
    },
    "dcnv4_cpu": {
        "srcs": ["dcnv4/dcnv4_cpu.cc"],
        "cuda_srcs": [],
        "hdrs": ["dcnv4/dcnv4_params.h", "dcnv4/dcnv4_params_dict.h"],
        "cutlass": False,
    },
    "cross_scan_cpu": {
        "srcs": ["cross_scan/cross_scan_cpu.cc"],
        "cuda_srcs": [],
        "hdrs": ["cross_scan/cross_scan_params.h", "cross_scan/cross_scan_params_dict.h"],
        "cutlass": False,
    },
    # Not yet run on a GPU: compiled for CUDA_ARCHS, checked by the host-side index tests and the
    # ptxas report test only (README, "CUDA kernels").
    "selective_scan_cuda": {
        "srcs": ["selective_scan/selective_scan_cuda_module.cc"],
        "cuda_srcs": ["selective_scan/selective_scan_fwd.cu", "selective_scan/selective_scan_bwd.cu"],
        "hdrs": [
            "selective_scan/selective_scan_params.h",
            "selective_scan/selective_scan_params_dict.h",
            "selective_scan/selective_scan_launch.h",
            "selective_scan/selective_scan_layout.h",
            "selective_scan/selective_scan_config.h",
            "selective_scan/selective_scan_io.cuh",
            "selective_scan/selective_scan_fwd.cuh",
            "selective_scan/selective_scan_bwd.cuh",
            "common/cuda_math.cuh",
            "common/warp_scan.cuh",
        ],
        "cutlass": True,
    },
    "cross_scan_cuda": {
        "srcs": ["cross_scan/cross_scan_cuda_module.cc"],
        "cuda_srcs": ["cross_scan/cross_scan_cuda.cu"],
        "hdrs": [
            "cross_scan/cross_scan_cuda.h",
            "cross_scan/cross_scan_layout.h",
            "cross_scan/cross_scan_params.h",
            "cross_scan/cross_scan_params_dict.h",
        ],
        "cutlass": True,
    },
    "dcnv4_cuda": {
        "srcs": ["dcnv4/dcnv4_cuda_module.cc"],
        "cuda_srcs": ["dcnv4/dcnv4_fwd.cu", "dcnv4/dcnv4_bwd.cu"],
        "hdrs": [
            "dcnv4/dcnv4_cuda.h",
            "dcnv4/dcnv4_layout.h",
            "dcnv4/dcnv4_params.h",
            "dcnv4/dcnv4_params_dict.h",
            "dcnv4/dcnv4_io.cuh",
        ],
        "cutlass": False,
    },
    "ssd_cuda": {
        "srcs": ["ssd/ssd_cuda_module.cc"],
        "cuda_srcs": ["ssd/ssd_fwd.cu", "ssd/ssd_bwd.cu"],
        "hdrs": [
            "ssd/ssd_params.h",
            "ssd/ssd_params_dict.h",
            "ssd/ssd_layout.h",
            "ssd/ssd_tile_layout.h",
            "ssd/ssd_launch.h",
            "ssd/ssd_cuda_tile.cuh",
            "ssd/ssd_fwd.cuh",
            "ssd/ssd_bwd.cuh",
            "common/cuda_math.cuh",
        ],
        "cutlass": True,
    },
    "hello_cuda": {
        "srcs": ["hello_cuda_module.cc"],
        "cuda_srcs": ["hello_cuda.cu"],
        "hdrs": ["hello_cuda.h"],
        "cutlass": True,
    },
}
