/* The C half of libbodyrt: the exported functions of bodyrt.h.
 *
 * Pasted by bodyrt.runtime.capi.build into the C file cffi generates, after cffi's embedding code
 * and after two build constants (BODYRT_BUILD_VERSION, BODYRT_BUILD_PYTHON). Each function starts
 * Python if needed and forwards to a Python function of bodyrt.runtime.capi.embedded (declared
 * `extern "Python"` in the build's cdef), passing this thread's error buffer. All argument
 * checks are on the Python side, in one place.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "bodyrt.h"

/* The Python functions, defined by cffi after this file. The build reads the lines between the
 * two markers into its cdef, as an extern "Python" block. */
/* BEGIN python functions */
static int bodyrt_py_create(const char *bundle_dir, const char *backend, int threads, const char *precision,
                            uint64_t *pipeline_id, char *error, size_t error_capacity);
static int bodyrt_py_destroy(uint64_t pipeline_id, char *error, size_t error_capacity);
static int bodyrt_py_pipeline_last_error(uint64_t pipeline_id, char *message, size_t capacity,
                                         char *error, size_t error_capacity);
static int bodyrt_py_faces(uint64_t pipeline_id, const int32_t **faces, size_t *face_count,
                           char *error, size_t error_capacity);
static int bodyrt_py_copy_faces(uint64_t pipeline_id, int32_t *buffer, size_t capacity,
                                size_t *count, char *error, size_t error_capacity);
static int bodyrt_py_run(uint64_t pipeline_id, const uint8_t *pixels, int width, int height,
                         int64_t row_stride, int channel_order, const float *boxes,
                         int person_count, uint64_t *result_id, char *error,
                         size_t error_capacity);
static int bodyrt_py_release(uint64_t result_id, char *error, size_t error_capacity);
static int bodyrt_py_person_count(uint64_t result_id, size_t *person_count, char *error,
                                  size_t error_capacity);
static int bodyrt_py_output_shape(uint64_t result_id, int output, size_t *shape, size_t *ndim,
                                  char *error, size_t error_capacity);
static int bodyrt_py_copy_output(uint64_t result_id, int output, float *buffer, size_t capacity,
                                 size_t *count, char *error, size_t error_capacity);
static int bodyrt_py_output_data(uint64_t result_id, int output, const float **data,
                                 size_t *count, char *error, size_t error_capacity);
/* END python functions */

static _Thread_local char thread_error[1024];

static pthread_once_t python_once = PTHREAD_ONCE_INIT;
static int python_ready = 0;
static char python_start_error[1024];

/* Called by the init code (bodyrt.runtime.capi.build) when importing bodyrt fails. */
static void bodyrt_record_start_error(const char *message)
{
    snprintf(python_start_error, sizeof python_start_error, "%s", message);
}

/* Start the interpreter as the build's python executable, so that it finds the same prefix,
 * venv and site-packages; then let cffi run the init code. The configuration is isolated: the
 * host's PYTHONHOME, PYTHONPATH and other PYTHON* variables (perhaps meant for another Python)
 * are ignored, and the host keeps its signal handlers.
 *
 * A process that already runs Python is refused: cffi's start-up (cffi 2.0, CPython 3.8 to
 * 3.11) borrows PyCapsule_Type.tp_version_tag as a spin lock, and a running interpreter may have
 * set that tag already, which aborts or hangs the process. Python code calls bodyrt.runtime. */
static void start_python(void)
{
    PyConfig config;
    PyStatus status;
    if (Py_IsInitialized()) {
        snprintf(python_start_error, sizeof python_start_error,
                 "libbodyrt cannot run in a process that already runs Python; "
                 "from Python, use bodyrt.runtime.open_bundle instead");
        return;
    }
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 1;  /* site-packages, and the .pth files of editable installs */
    status = PyConfig_SetBytesString(&config, &config.program_name, BODYRT_BUILD_PYTHON);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        snprintf(python_start_error, sizeof python_start_error,
                 "the embedded Python (%s) failed to start: %s", BODYRT_BUILD_PYTHON,
                 status.err_msg ? status.err_msg : "no reason given");
        return;
    }
    PyEval_SaveThread();
    if (cffi_start_python() != 0) {
        if (python_start_error[0] == '\0')
            snprintf(python_start_error, sizeof python_start_error,
                     "the embedded Python (%s) could not load bodyrt; its traceback is on stderr",
                     BODYRT_BUILD_PYTHON);
        return;
    }
    python_ready = 1;
}

static int python_started(void)
{
    pthread_once(&python_once, start_python);
    if (python_ready)
        return 1;
    snprintf(thread_error, sizeof thread_error, "%s", python_start_error);
    return 0;
}

BODYRT_API const char *bodyrt_version(void)
{
    return BODYRT_BUILD_VERSION;
}

BODYRT_API const char *bodyrt_status_name(bodyrt_status status)
{
    switch (status) {
    case BODYRT_OK: return "BODYRT_OK";
    case BODYRT_ERROR_INVALID_ARGUMENT: return "BODYRT_ERROR_INVALID_ARGUMENT";
    case BODYRT_ERROR_INVALID_HANDLE: return "BODYRT_ERROR_INVALID_HANDLE";
    case BODYRT_ERROR_BUFFER_TOO_SMALL: return "BODYRT_ERROR_BUFFER_TOO_SMALL";
    case BODYRT_ERROR_BUNDLE: return "BODYRT_ERROR_BUNDLE";
    case BODYRT_ERROR_BACKEND_UNAVAILABLE: return "BODYRT_ERROR_BACKEND_UNAVAILABLE";
    case BODYRT_ERROR_PYTHON: return "BODYRT_ERROR_PYTHON";
    case BODYRT_ERROR_RUNTIME: return "BODYRT_ERROR_RUNTIME";
    case BODYRT_ERROR_INTERNAL: return "BODYRT_ERROR_INTERNAL";
    }
    return "(not a bodyrt_status)";
}

BODYRT_API const char *bodyrt_last_error(void)
{
    return thread_error;
}

BODYRT_API bodyrt_options bodyrt_default_options(void)
{
    bodyrt_options options = {"onnxruntime", 2, "fp32"};
    return options;
}

BODYRT_API bodyrt_status bodyrt_create(const char *bundle_dir, const bodyrt_options *options,
                                       bodyrt_pipeline *pipeline)
{
    bodyrt_options defaults = bodyrt_default_options();
    if (pipeline != NULL)
        pipeline->id = 0;
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    if (options == NULL)
        options = &defaults;
    return bodyrt_py_create(bundle_dir, options->backend, options->threads, options->precision,
                            pipeline ? &pipeline->id : NULL, thread_error, sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_destroy(bodyrt_pipeline pipeline)
{
    if (pipeline.id == 0)
        return BODYRT_OK;
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_destroy(pipeline.id, thread_error, sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_pipeline_last_error(bodyrt_pipeline pipeline, char *message,
                                                    size_t capacity)
{
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_pipeline_last_error(pipeline.id, message, capacity, thread_error,
                                         sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_faces(bodyrt_pipeline pipeline, const int32_t **faces,
                                      size_t *face_count)
{
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_faces(pipeline.id, faces, face_count, thread_error, sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_copy_faces(bodyrt_pipeline pipeline, int32_t *buffer,
                                           size_t capacity, size_t *count)
{
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_copy_faces(pipeline.id, buffer, capacity, count, thread_error,
                                sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_run(bodyrt_pipeline pipeline, const uint8_t *pixels, int width,
                                    int height, int64_t row_stride,
                                    bodyrt_channel_order channel_order, const float *boxes,
                                    int person_count, bodyrt_result *result)
{
    if (result != NULL)
        result->id = 0;
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_run(pipeline.id, pixels, width, height, row_stride, (int)channel_order,
                         boxes, person_count, result ? &result->id : NULL, thread_error,
                         sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_release(bodyrt_result result)
{
    if (result.id == 0)
        return BODYRT_OK;
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_release(result.id, thread_error, sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_person_count(bodyrt_result result, size_t *person_count)
{
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_person_count(result.id, person_count, thread_error, sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_output_shape(bodyrt_result result, bodyrt_output output,
                                             size_t shape[BODYRT_MAX_DIMS], size_t *ndim)
{
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_output_shape(result.id, (int)output, shape, ndim, thread_error,
                                  sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_copy_output(bodyrt_result result, bodyrt_output output,
                                            float *buffer, size_t capacity, size_t *count)
{
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_copy_output(result.id, (int)output, buffer, capacity, count, thread_error,
                                 sizeof thread_error);
}

BODYRT_API bodyrt_status bodyrt_output_data(bodyrt_result result, bodyrt_output output,
                                            const float **data, size_t *count)
{
    if (!python_started())
        return BODYRT_ERROR_PYTHON;
    return bodyrt_py_output_data(result.id, (int)output, data, count, thread_error,
                                 sizeof thread_error);
}
