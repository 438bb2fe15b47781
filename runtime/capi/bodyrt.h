/* bodyrt.h: the C API of libbodyrt, the bodyrt runtime embedded in C and C++ services.
 *
 * Build the library, this header and an example with `bodyrt build-capi --out DIR`, then
 *     gcc service.c -IDIR -LDIR -lbodyrt -Wl,-rpath,DIR
 * The header and the library come from the same build; use them together.
 *
 * Two builds of this header's library exist; both have the same functions, statuses, handles,
 * lifetimes and thread rules.
 *
 * The native library (the default of `bodyrt build-capi`) is C++17 on OpenVINO's C++ runtime: no
 * Python in the process, nothing to start, no environment to find. It links libopenvino (and its
 * TBB) from the openvino wheel it was built against, with an rpath to them. It runs the openvino
 * backend only, at fp32, bf16 or int8. BODYRT_ERROR_PYTHON never comes from it.
 *
 * The embedded library (`bodyrt build-capi --embedded`) runs bodyrt's Python runtime (ONNX Runtime
 * on the CPU by default, and the GPU backends) in an interpreter it starts on the first call that
 * needs one (about 0.2 s, plus opening the bundle). That interpreter is the Python environment the
 * library was built from, found without any environment variable; the host's PYTHONHOME,
 * PYTHONPATH and other PYTHON* variables are ignored, and its signal handlers are left alone. The
 * interpreter lives until the process exits. A process that already runs Python (ctypes, an
 * embedding host) gets BODYRT_ERROR_PYTHON: use bodyrt.runtime there.
 *
 * Handles. A pipeline (an opened bundle) and a result (the outputs of one run) are small structs
 * holding an id, never a pointer. Ids are never reused: a handle that was destroyed or released
 * gives BODYRT_ERROR_INVALID_HANDLE, never a crash. The zero handle, `{0}`, is "no handle".
 *
 * Errors. Every function that can fail returns a bodyrt_status; messages name the function and
 * the argument at fault. The message of the latest failed call is kept per thread
 * (bodyrt_last_error) and, for calls given a pipeline or one of its results, per pipeline
 * (bodyrt_pipeline_last_error).
 *
 * Lifetimes.
 *   pipeline      from bodyrt_create until bodyrt_destroy.
 *   result        from bodyrt_run until bodyrt_release; independent of its pipeline (it stays
 *                 valid after bodyrt_destroy).
 *   bodyrt_output_data pointers   library-owned, read-only, until bodyrt_release of the result.
 *   bodyrt_faces pointer          library-owned, read-only, until bodyrt_destroy of the pipeline.
 *   bodyrt_version, bodyrt_status_name strings    static.
 *   bodyrt_last_error string      thread-local, until the next failed call on the same thread.
 *   Inputs (pixels, boxes, paths) are read during the call only; the library keeps no pointer.
 *
 * Thread safety. Every function may be called from any thread. Each pipeline has a lock held for
 * the whole of a bodyrt_run, so threads sharing a pipeline run one at a time (safe, not parallel).
 * Give each thread its own pipeline to run in parallel: in the native library pipelines share
 * nothing, in the embedded one ONNX Runtime releases the GIL while it computes (the GIL still
 * serialises the bookkeeping of every call). bodyrt_destroy waits for a run in progress on the
 * pipeline; runs that start after it fail with BODYRT_ERROR_INVALID_HANDLE. Reading one result
 * from several threads is safe; releasing it while another thread still reads its
 * bodyrt_output_data pointers is not.
 *
 * Arrays. Outputs are float32, C order, the person on the first axis, the shapes listed at
 * bodyrt_output. Capacities and counts are in elements (floats, int32s), not bytes.
 */
#ifndef BODYRT_H
#define BODYRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define BODYRT_API __attribute__((visibility("default")))
#else
#define BODYRT_API
#endif

/* The largest number of axes of an output (body_pose has 4). */
#define BODYRT_MAX_DIMS 4

typedef enum bodyrt_status {
    BODYRT_OK = 0,
    BODYRT_ERROR_INVALID_ARGUMENT = 1,   /* a NULL pointer, a size <= 0 or too large, a short stride,
                                            a bad box */
    BODYRT_ERROR_INVALID_HANDLE = 2,     /* a pipeline destroyed or a result released (or never made) */
    BODYRT_ERROR_BUFFER_TOO_SMALL = 3,   /* a caller buffer below the needed count; nothing copied */
    BODYRT_ERROR_BUNDLE = 4,             /* the bundle directory is missing, incomplete or modified */
    BODYRT_ERROR_BACKEND_UNAVAILABLE = 5, /* the backend is unknown or its libraries are missing */
    BODYRT_ERROR_PYTHON = 6,             /* the embedded Python or bodyrt failed to start, or the
                                            process already runs Python */
    BODYRT_ERROR_RUNTIME = 7,            /* any other bodyrt error */
    BODYRT_ERROR_INTERNAL = 8            /* an unexpected exception: a bug, please report it */
} bodyrt_status;

typedef enum bodyrt_channel_order {
    BODYRT_RGB = 0,
    BODYRT_BGR = 1
} bodyrt_channel_order;

/* The outputs of a run. N is the number of persons; V the mesh's vertex count (10475 for SMPL-X).
 * Rotations are 3x3 matrices; lengths are metres unless said otherwise. */
typedef enum bodyrt_output {
    BODYRT_OUTPUT_VERTICES = 0,            /* (N, V, 3) */
    BODYRT_OUTPUT_JOINTS = 1,              /* (N, 144, 3) */
    BODYRT_OUTPUT_GLOBAL_ORIENT = 2,       /* (N, 3, 3) */
    BODYRT_OUTPUT_BODY_POSE = 3,           /* (N, 21, 3, 3) */
    BODYRT_OUTPUT_LEFT_HAND_POSE = 4,      /* (N, 15, 3, 3) */
    BODYRT_OUTPUT_RIGHT_HAND_POSE = 5,     /* (N, 15, 3, 3) */
    BODYRT_OUTPUT_JAW_POSE = 6,            /* (N, 3, 3) */
    BODYRT_OUTPUT_BETAS = 7,               /* (N, 10) shape coefficients */
    BODYRT_OUTPUT_EXPRESSION = 8,          /* (N, 10) expression coefficients */
    BODYRT_OUTPUT_CAMERA_SCALE = 9,        /* (N,) weak-perspective scale */
    BODYRT_OUTPUT_CAMERA_TRANSLATION = 10, /* (N, 2) weak-perspective x, y */
    BODYRT_OUTPUT_PINHOLE_TRANSLATION = 11, /* (N, 3) pinhole camera translation */
    BODYRT_OUTPUT_FOCAL_LENGTH = 12,       /* (N,) pixels, of the pinhole camera */
    BODYRT_OUTPUT_PART_BOXES = 13,         /* (N, 3, 3) hand and face boxes: cx, cy, size, pixels */
    BODYRT_OUTPUT_CROP_TRANSFORMS = 14     /* (N, 3, 3) image pixels to body-crop pixels */
} bodyrt_output;

typedef struct bodyrt_pipeline { uint64_t id; } bodyrt_pipeline;
typedef struct bodyrt_result { uint64_t id; } bodyrt_result;

typedef struct bodyrt_options {
    const char *backend;   /* native library: "openvino" (the default and only one);
                              embedded library: "onnxruntime" (the default), "openvino", ... */
    int threads;           /* CPU threads per stage, 1 to the CPU count (default 2) */
    const char *precision; /* "fp32" (the default), "bf16" (a CPU with native bf16), "int8"
                              (a bundle with an int8 variant); bf16 and int8 need "openvino" */
} bodyrt_options;

/* ---- library ---------------------------------------------------------------------------- */

/* The bodyrt version the library was built from, e.g. "0.1.0". Static storage; never fails. */
BODYRT_API const char *bodyrt_version(void);

/* "BODYRT_OK", "BODYRT_ERROR_INVALID_HANDLE", ...: the enumerator's name. Static storage. */
BODYRT_API const char *bodyrt_status_name(bodyrt_status status);

/* The message of the latest failed call on this thread ("" if none). Thread-local storage,
 * overwritten by the next failed call on this thread; successful calls leave it as it is.
 * It is the only place a failed bodyrt_create, or a failure to start Python, is described. */
BODYRT_API const char *bodyrt_last_error(void);

/* ---- pipelines -------------------------------------------------------------------------- */

BODYRT_API bodyrt_options bodyrt_default_options(void);

/* Verify the bundle directory and open every stage. options may be NULL (the defaults).
 * On failure *pipeline is {0}. */
BODYRT_API bodyrt_status bodyrt_create(const char *bundle_dir, const bodyrt_options *options,
                                       bodyrt_pipeline *pipeline);

/* Close the pipeline; its id becomes invalid. Waits for a bodyrt_run in progress on it.
 * Its results stay valid. Destroying {0} does nothing and returns BODYRT_OK. */
BODYRT_API bodyrt_status bodyrt_destroy(bodyrt_pipeline pipeline);

/* Copy the message of the latest failed call given this pipeline or one of its results, from
 * any thread, into message (NUL-terminated, truncated to capacity bytes; "" if none). */
BODYRT_API bodyrt_status bodyrt_pipeline_last_error(bodyrt_pipeline pipeline, char *message,
                                                    size_t capacity);

/* The mesh's triangles, (face_count, 3) int32 vertex indices. Library-owned, read-only, valid
 * until the pipeline is destroyed. */
BODYRT_API bodyrt_status bodyrt_faces(bodyrt_pipeline pipeline, const int32_t **faces,
                                      size_t *face_count);

/* Copy the triangles into buffer (capacity int32s, at least 3 * face_count). count, if not NULL,
 * receives the number of int32s needed, also when the buffer is too small. */
BODYRT_API bodyrt_status bodyrt_copy_faces(bodyrt_pipeline pipeline, int32_t *buffer,
                                           size_t capacity, size_t *count);

/* ---- running ---------------------------------------------------------------------------- */

/* Run one image with person_count person boxes.
 * pixels: height rows of width pixels, 3 bytes each in channel_order; row_stride bytes from the
 *   start of one row to the next (>= 3 * width). The caller guarantees that
 *   row_stride * (height - 1) + 3 * width bytes are readable. Read during the call only.
 * boxes: person_count x (x0, y0, x1, y1) floats, image pixels, x1 > x0 and y1 > y0. The caller
 *   guarantees 4 * person_count readable floats. Read during the call only.
 * On success *result is a new result, to release with bodyrt_release; on failure it is {0}. */
BODYRT_API bodyrt_status bodyrt_run(bodyrt_pipeline pipeline, const uint8_t *pixels, int width,
                                    int height, int64_t row_stride,
                                    bodyrt_channel_order channel_order, const float *boxes,
                                    int person_count, bodyrt_result *result);

/* Free a result's arrays; its id becomes invalid, and so does every pointer bodyrt_output_data
 * gave for it. Releasing {0} does nothing and returns BODYRT_OK. */
BODYRT_API bodyrt_status bodyrt_release(bodyrt_result result);

/* ---- results ---------------------------------------------------------------------------- */

BODYRT_API bodyrt_status bodyrt_person_count(bodyrt_result result, size_t *person_count);

/* The output's shape: *ndim axes (at most BODYRT_MAX_DIMS) written to shape[0 .. *ndim - 1]. */
BODYRT_API bodyrt_status bodyrt_output_shape(bodyrt_result result, bodyrt_output output,
                                             size_t shape[BODYRT_MAX_DIMS], size_t *ndim);

/* Copy an output into buffer (capacity floats). count, if not NULL, receives the number of
 * floats the output has, also when the buffer is too small (then nothing is copied). */
BODYRT_API bodyrt_status bodyrt_copy_output(bodyrt_result result, bodyrt_output output,
                                            float *buffer, size_t capacity, size_t *count);

/* Point *data at the output's floats and set *count to their number: no copy. Library-owned,
 * read-only, valid until bodyrt_release(result), from any thread. */
BODYRT_API bodyrt_status bodyrt_output_data(bodyrt_result result, bodyrt_output output,
                                            const float **data, size_t *count);

#ifdef __cplusplus
}
#endif

#endif /* BODYRT_H */
