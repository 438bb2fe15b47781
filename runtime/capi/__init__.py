"""bodyrt.runtime.capi: the runtime as a C library, libbodyrt.so, built with cffi's embedding mode.

    bodyrt.h        the C API (the repository's include/bodyrt.h links here): handles, statuses, lifetimes
    bodyrt_capi.c   the exported C functions: start Python once, forward to embedded.py
    embedded.py     the Python side: registry of ids, argument checks, errors into status codes
    build.py        `bodyrt build-capi`: writes the library, the header and the example minimal.c
"""
