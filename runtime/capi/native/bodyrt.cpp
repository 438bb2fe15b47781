// bodyrt.cpp: the exported functions of bodyrt.h for the native library.
//
// Handles are ids into two tables (pipelines, results) guarded by one mutex; ids start at 1 and are
// never reused, so a stale handle is a failed lookup, never a dangling pointer. Entries are
// shared_ptrs: a call holds its entry alive while it works, even if another thread removes it.
// Each pipeline has a run mutex, held for a whole bodyrt_run and by bodyrt_destroy, so threads
// sharing a pipeline run one at a time and destroy waits for a run in progress. Different
// pipelines share nothing but the tables' mutex (held only for lookups) and run in parallel.
//
// Every exported function catches everything: a C++ exception never crosses the C boundary.
#include <atomic>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <unordered_map>

#include <unistd.h>

#include "bodyrt.h"
#include "errors.h"
#include "pipeline.h"

#ifndef BODYRT_BUILD_VERSION
#error "BODYRT_BUILD_VERSION must be defined by the build (the bodyrt version, e.g. \"0.1.0\")"
#endif

namespace {

using namespace bodyrt;

constexpr int OUTPUT_COUNT = 15;
const char* const OUTPUT_NAMES[OUTPUT_COUNT] = {
    "vertices", "joints", "global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "betas",
    "expression", "camera_scale", "camera_translation", "pinhole_translation", "focal_length", "part_boxes",
    "crop_transforms"};

// Widths the crop kernel indexes in int (column * 3 + channel).
constexpr int MAX_IMAGE_WIDTH = std::numeric_limits<int>::max() / 3;
// The embedded C API's and the CLI's limits (bodyrt/images.py MAX_PIXELS, bodyrt/limits.py).
constexpr int64_t MAX_PIXELS = 100000000;

thread_local char thread_error[1024];

// The int a C caller passed for an enum parameter. C allows any int there (a bad channel order, an
// output 99); C++ does not allow loading such a value as the enum type, so the bytes are copied.
template <typename Enum>
int enum_value(const Enum& value)
{
    static_assert(sizeof(Enum) == sizeof(int), "bodyrt.h's enums are int-sized");
    int raw;
    std::memcpy(&raw, &value, sizeof raw);
    return raw;
}

struct PipelineEntry {
    std::mutex run_mutex;  // held for a whole run, and by destroy
    std::unique_ptr<Pipeline> pipeline;
    std::vector<int32_t> faces;
    std::mutex error_mutex;
    std::string last_error;
};

struct ResultEntry {
    uint64_t pipeline_id;
    size_t person_count;
    std::map<int, Tensor> outputs;  // bodyrt_output -> array
};

class Registry {
public:
    uint64_t add_pipeline(std::shared_ptr<PipelineEntry> entry)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        uint64_t id = next_id_++;
        pipelines_[id] = std::move(entry);
        return id;
    }

    uint64_t add_result(std::shared_ptr<ResultEntry> entry)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        uint64_t id = next_id_++;
        results_[id] = std::move(entry);
        return id;
    }

    std::shared_ptr<PipelineEntry> pipeline(uint64_t id, bool remove = false)
    {
        std::shared_ptr<PipelineEntry> entry = find(pipelines_, id, remove);
        if (!entry) throw InvalidHandle("pipeline " + std::to_string(id) + " is not open (destroyed, or never created)");
        return entry;
    }

    std::shared_ptr<ResultEntry> result(uint64_t id, bool remove = false)
    {
        std::shared_ptr<ResultEntry> entry = find(results_, id, remove);
        if (!entry) throw InvalidHandle("result " + std::to_string(id) + " is not held (released, or never made)");
        return entry;
    }

    std::shared_ptr<PipelineEntry> pipeline_or_null(uint64_t id)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = pipelines_.find(id);
        return found == pipelines_.end() ? nullptr : found->second;
    }

    std::shared_ptr<PipelineEntry> pipeline_of_result_or_null(uint64_t id)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        auto result = results_.find(id);
        if (result == results_.end()) return nullptr;
        auto found = pipelines_.find(result->second->pipeline_id);
        return found == pipelines_.end() ? nullptr : found->second;
    }

private:
    template <typename Table>
    typename Table::mapped_type find(Table& table, uint64_t id, bool remove)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = table.find(id);
        if (found == table.end()) return nullptr;
        typename Table::mapped_type entry = found->second;
        if (remove) table.erase(found);
        return entry;
    }

    std::mutex mutex_;
    uint64_t next_id_ = 1;
    std::unordered_map<uint64_t, std::shared_ptr<PipelineEntry>> pipelines_;
    std::unordered_map<uint64_t, std::shared_ptr<ResultEntry>> results_;
};

// Never destroyed: a host thread may still call in while the process exits.
Registry& registry()
{
    static Registry* instance = new Registry();
    return *instance;
}

enum class Blame { none, pipeline, result };

void set_thread_error(const std::string& message)
{
    std::snprintf(thread_error, sizeof thread_error, "%s", message.c_str());
}

// Run `body`; turn any exception into a status and a message "bodyrt_<function>: ...", kept for
// this thread and for the pipeline the first argument names (directly, or through its result).
template <typename Body>
bodyrt_status guarded(const char* function, Blame blame, uint64_t handle, Body body)
{
    std::string message;
    bodyrt_status status;
    try {
        body();
        return BODYRT_OK;
    } catch (const Error& error) {
        status = error.status;
        message = std::string(function) + ": " + error.what();
    } catch (const std::bad_alloc&) {
        status = BODYRT_ERROR_RUNTIME;
        message = std::string(function) + ": out of memory";
    } catch (const std::exception& error) {
        status = BODYRT_ERROR_INTERNAL;
        message = std::string(function) + ": unexpected error: " + error.what();
    } catch (...) {
        status = BODYRT_ERROR_INTERNAL;
        message = std::string(function) + ": unexpected error of an unknown type";
    }
    try {
        set_thread_error(message);
        std::shared_ptr<PipelineEntry> blamed;
        if (blame == Blame::pipeline) blamed = registry().pipeline_or_null(handle);
        if (blame == Blame::result) blamed = registry().pipeline_of_result_or_null(handle);
        if (blamed) {
            std::lock_guard<std::mutex> lock(blamed->error_mutex);
            blamed->last_error = message;
        }
    } catch (...) {
    }
    return status;
}

void require_pointer(const void* pointer, const char* name)
{
    if (pointer == nullptr) throw InvalidArgument(std::string(name) + " is NULL");
}

void require_positive(int64_t value, const char* name)
{
    if (value <= 0) throw InvalidArgument(std::string(name) + " must be > 0, got " + std::to_string(value));
}

// Threads: 1 to this machine's CPU count, as bodyrt.limits.max_threads (os.cpu_count()).
void require_threads(int threads)
{
    require_positive(threads, "options->threads");
    long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 1) cpus = 1;
    if (threads > cpus)
        throw InvalidArgument("options->threads must be between 1 and " + std::to_string(cpus) +
                              " (this machine's CPUs), got " + std::to_string(threads));
}

std::string shape_text(const std::vector<int64_t>& shape)
{
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + (shape.size() == 1 ? ",)" : ")");
}

template <typename T>
void copy_array(const T* data, size_t size, const std::string& shape, T* buffer, size_t capacity, size_t* count,
                const char* what)
{
    if (count != nullptr) *count = size;
    require_pointer(buffer, "buffer");
    if (capacity < size)
        throw BufferTooSmall("capacity " + std::to_string(capacity) + " is too small for " + what + " " + shape +
                             ": it needs " + std::to_string(size));
    if (size) std::memcpy(buffer, data, size * sizeof(T));
}

const Tensor& output_of(const ResultEntry& held, int output)
{
    if (output < 0 || output >= OUTPUT_COUNT)
        throw InvalidArgument("output " + std::to_string(output) + " is not a bodyrt_output value");
    auto found = held.outputs.find(output);
    if (found == held.outputs.end())
        throw BundleError(std::string("this bundle's pipeline has no '") + OUTPUT_NAMES[output] + "' output");
    return found->second;
}

}  // namespace

extern "C" {

BODYRT_API const char* bodyrt_version(void) { return BODYRT_BUILD_VERSION; }

BODYRT_API const char* bodyrt_status_name(bodyrt_status status_argument)
{
    switch (enum_value(status_argument)) {
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

BODYRT_API const char* bodyrt_last_error(void) { return thread_error; }

BODYRT_API bodyrt_options bodyrt_default_options(void)
{
    bodyrt_options options;
    options.backend = "openvino";
    options.threads = 2;
    options.precision = "fp32";
    return options;
}

BODYRT_API bodyrt_status bodyrt_create(const char* bundle_dir, const bodyrt_options* options, bodyrt_pipeline* pipeline)
{
    if (pipeline != nullptr) pipeline->id = 0;
    return guarded("bodyrt_create", Blame::none, 0, [&] {
        bodyrt_options defaults = bodyrt_default_options();
        if (options == nullptr) options = &defaults;
        require_pointer(bundle_dir, "bundle_dir");
        require_pointer(options->backend, "options->backend");
        require_threads(options->threads);
        require_pointer(options->precision, "options->precision");
        require_pointer(pipeline, "pipeline");
        PipelineOptions settings;
        settings.backend = options->backend;
        settings.threads = options->threads;
        settings.precision = options->precision;
        auto entry = std::make_shared<PipelineEntry>();
        entry->pipeline = std::make_unique<Pipeline>(bundle_dir, settings);
        entry->faces = entry->pipeline->faces();
        pipeline->id = registry().add_pipeline(std::move(entry));
    });
}

BODYRT_API bodyrt_status bodyrt_destroy(bodyrt_pipeline pipeline)
{
    if (pipeline.id == 0) return BODYRT_OK;
    return guarded("bodyrt_destroy", Blame::pipeline, pipeline.id, [&] {
        std::shared_ptr<PipelineEntry> entry = registry().pipeline(pipeline.id, true);
        std::lock_guard<std::mutex> lock(entry->run_mutex);  // a run in progress finishes first
        entry->pipeline.reset();
    });
}

BODYRT_API bodyrt_status bodyrt_pipeline_last_error(bodyrt_pipeline pipeline, char* message, size_t capacity)
{
    return guarded("bodyrt_pipeline_last_error", Blame::none, 0, [&] {
        std::shared_ptr<PipelineEntry> entry = registry().pipeline(pipeline.id);
        require_pointer(message, "message");
        if (capacity == 0) throw InvalidArgument("capacity must be > 0, got 0");
        std::lock_guard<std::mutex> lock(entry->error_mutex);
        size_t length = std::min(entry->last_error.size(), capacity - 1);
        std::memcpy(message, entry->last_error.data(), length);
        message[length] = '\0';
    });
}

BODYRT_API bodyrt_status bodyrt_faces(bodyrt_pipeline pipeline, const int32_t** faces, size_t* face_count)
{
    return guarded("bodyrt_faces", Blame::pipeline, pipeline.id, [&] {
        std::shared_ptr<PipelineEntry> entry = registry().pipeline(pipeline.id);
        require_pointer(faces, "faces");
        require_pointer(face_count, "face_count");
        *faces = entry->faces.data();
        *face_count = entry->faces.size() / 3;
    });
}

BODYRT_API bodyrt_status bodyrt_copy_faces(bodyrt_pipeline pipeline, int32_t* buffer, size_t capacity, size_t* count)
{
    return guarded("bodyrt_copy_faces", Blame::pipeline, pipeline.id, [&] {
        std::shared_ptr<PipelineEntry> entry = registry().pipeline(pipeline.id);
        std::vector<int64_t> shape = {int64_t(entry->faces.size() / 3), 3};
        copy_array(entry->faces.data(), entry->faces.size(), shape_text(shape), buffer, capacity, count, "faces");
    });
}

BODYRT_API bodyrt_status bodyrt_run(bodyrt_pipeline pipeline, const uint8_t* pixels, int width, int height,
                                    int64_t row_stride, bodyrt_channel_order channel_order, const float* boxes,
                                    int person_count, bodyrt_result* result)
{
    if (result != nullptr) result->id = 0;
    return guarded("bodyrt_run", Blame::pipeline, pipeline.id, [&] {
        std::shared_ptr<PipelineEntry> entry = registry().pipeline(pipeline.id);
        require_pointer(pixels, "pixels");
        require_positive(width, "width");
        require_positive(height, "height");
        if (width > MAX_IMAGE_WIDTH)
            throw InvalidArgument("width " + std::to_string(width) + " is above the largest width, " +
                                  std::to_string(MAX_IMAGE_WIDTH) + " pixels");
        if (row_stride < 3 * int64_t(width))
            throw InvalidArgument("row_stride " + std::to_string(row_stride) + " is smaller than a row of " +
                                  std::to_string(width) + " pixels (" + std::to_string(3 * int64_t(width)) + " bytes)");
        if (row_stride > (std::numeric_limits<int64_t>::max() - 3 * int64_t(width)) / height)
            throw InvalidArgument("an image of " + std::to_string(height) + " rows of " + std::to_string(row_stride) +
                                  " bytes is larger than any address space");
        if (int64_t(width) * height > MAX_PIXELS)
            throw InvalidArgument("image of " + std::to_string(width) + "x" + std::to_string(height) +
                                  " pixels is too large (at most " + std::to_string(MAX_PIXELS / 1000000) +
                                  " million pixels)");
        int order = enum_value(channel_order);
        if (order != BODYRT_RGB && order != BODYRT_BGR)
            throw InvalidArgument("channel_order " + std::to_string(order) + " is neither BODYRT_RGB nor BODYRT_BGR");
        require_pointer(boxes, "boxes");
        require_positive(person_count, "person_count");
        require_pointer(result, "result");
        ImageView image{pixels, width, height, row_stride, order == BODYRT_BGR};
        std::map<std::string, Tensor> outputs;
        {
            std::lock_guard<std::mutex> lock(entry->run_mutex);
            if (!entry->pipeline)
                throw InvalidHandle("pipeline " + std::to_string(pipeline.id) + " was destroyed during this call");
            outputs = entry->pipeline->run(image, boxes, person_count);
        }
        auto held = std::make_shared<ResultEntry>();
        held->pipeline_id = pipeline.id;
        held->person_count = size_t(person_count);
        for (int output = 0; output < OUTPUT_COUNT; ++output) {
            auto found = outputs.find(OUTPUT_NAMES[output]);
            if (found != outputs.end()) held->outputs[output] = std::move(found->second);
        }
        result->id = registry().add_result(std::move(held));
    });
}

BODYRT_API bodyrt_status bodyrt_release(bodyrt_result result)
{
    if (result.id == 0) return BODYRT_OK;
    return guarded("bodyrt_release", Blame::result, result.id, [&] { registry().result(result.id, true); });
}

BODYRT_API bodyrt_status bodyrt_person_count(bodyrt_result result, size_t* person_count)
{
    return guarded("bodyrt_person_count", Blame::result, result.id, [&] {
        std::shared_ptr<ResultEntry> held = registry().result(result.id);
        require_pointer(person_count, "person_count");
        *person_count = held->person_count;
    });
}

BODYRT_API bodyrt_status bodyrt_output_shape(bodyrt_result result, bodyrt_output output, size_t shape[BODYRT_MAX_DIMS],
                                             size_t* ndim)
{
    return guarded("bodyrt_output_shape", Blame::result, result.id, [&] {
        std::shared_ptr<ResultEntry> held = registry().result(result.id);
        const Tensor& array = output_of(*held, enum_value(output));
        require_pointer(shape, "shape");
        require_pointer(ndim, "ndim");
        if (array.shape.size() > BODYRT_MAX_DIMS)
            throw BundleError(std::string(OUTPUT_NAMES[enum_value(output)]) + " has more than BODYRT_MAX_DIMS axes");
        for (size_t axis = 0; axis < array.shape.size(); ++axis) shape[axis] = size_t(array.shape[axis]);
        *ndim = array.shape.size();
    });
}

BODYRT_API bodyrt_status bodyrt_copy_output(bodyrt_result result, bodyrt_output output, float* buffer, size_t capacity,
                                            size_t* count)
{
    return guarded("bodyrt_copy_output", Blame::result, result.id, [&] {
        std::shared_ptr<ResultEntry> held = registry().result(result.id);
        const Tensor& array = output_of(*held, enum_value(output));
        copy_array(array.data.data(), array.data.size(), shape_text(array.shape), buffer, capacity, count,
                   OUTPUT_NAMES[enum_value(output)]);
    });
}

BODYRT_API bodyrt_status bodyrt_output_data(bodyrt_result result, bodyrt_output output, const float** data,
                                            size_t* count)
{
    return guarded("bodyrt_output_data", Blame::result, result.id, [&] {
        std::shared_ptr<ResultEntry> held = registry().result(result.id);
        const Tensor& array = output_of(*held, enum_value(output));
        require_pointer(data, "data");
        require_pointer(count, "count");
        *data = array.data.data();
        *count = array.data.size();
    });
}

}  // extern "C"
