"""bodyrt.runtime.capi: the runtime as a C library, libbodyrt.so, in two builds behind one header.

    bodyrt.h          the C API, the one copy of the header: handles, statuses, lifetimes, threads
    native/           the native library: C++17 on OpenVINO's C++ runtime, no Python (the default)
        bodyrt.cpp      the exported functions: handle tables, argument checks, statuses, errors
        manifest.cpp    the one reader of manifest.json (nlohmann-json), and file verification
        sha256.cpp      SHA-256 of the bundle's files
        crops.cpp       body and part crops by the CUDA kernel's code (kernels/crops.cu) on the host
        pipeline.cpp    the manifest's step loop; each stage graph on OpenVINO at an explicit precision
        CMakeLists.txt  the build, also for people who vendor the source
    native_build.py   `bodyrt build-capi --out DIR [--sanitize]`: CMake + Ninja from pip
    bodyrt_capi.c     the embedded library's exported C functions: start Python once, forward to
    embedded.py       its Python side: registry of ids, argument checks, errors into status codes
    build.py          `bodyrt build-capi --embedded`: cffi's embedding mode (kept for the backends
                      the native library does not run: ONNX Runtime, TensorRT and CUDA)
    minimal.c         the C example of the README (the repository's examples/c/minimal.c links here)

The header, the example and the native sources live in this package so that the wheel ships them;
`bodyrt build-capi` copies the header and the example beside the library it builds.
"""
