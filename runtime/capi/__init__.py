"""bodyrt.runtime.capi: the runtime as a C library, libbodyrt.so, built with cffi's embedding mode.

    bodyrt.h        the C API, the one copy of the header: handles, statuses, lifetimes, threads
    bodyrt_capi.c   the exported C functions: start Python once, forward to embedded.py
    embedded.py     the Python side: registry of ids, argument checks, errors into status codes
    minimal.c       the C example of the README (the repository's examples/c/minimal.c links here)
    build.py        `bodyrt build-capi --out DIR`: writes the library, the header and the example

The header and the example live in this package so that the wheel ships them; `bodyrt build-capi`
copies them beside the library it builds.
"""
