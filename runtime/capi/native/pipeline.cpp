// pipeline.cpp: the step loop of bodyrt.runtime.pipeline and the OpenVINO runner of
// bodyrt.runtime.openvino_backend, in C++.
//
// Each stage is compiled once for one person with static shapes at creation, and on the first call
// with another person count once more with the graph's dynamic person axis, as the Python runner
// does (a static graph runs faster, and the same compiled forms give the same numbers).
// Precision is explicit: the inference-precision hint is always set (f32 for fp32 and int8, bf16
// for bf16), so fp32 never silently becomes bf16 on a CPU that has it.
//
// Compiled models are exported to $BODYRT_CACHE_DIR/openvino-native, else
// $XDG_CACHE_HOME/bodyrt/openvino-native, else ~/.cache/bodyrt/openvino-native, as
// <stage>-<key>.blob, the key hashing the graph's sha256 (from the manifest), the precision, the
// shapes, the thread count, the OpenVINO version and the CPU (name and capabilities), as the Python
// runner keys its own cache; a hit skips reading the ONNX file altogether. An unreadable blob is
// compiled anew, an unwritable cache only costs time; BODYRT_CACHE_DIR=none turns it off.
#include "pipeline.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <thread>

#include <openvino/openvino.hpp>

#include "errors.h"
#include "sha256.h"

namespace bodyrt {

namespace {

ov::element::Type precision_hint(const std::string& precision)
{
    return precision == "bf16" ? ov::element::bf16 : ov::element::f32;
}

bool cpu_has_bf16(ov::Core& core)
{
    std::vector<std::string> capabilities = core.get_property("CPU", ov::device::capabilities);
    return std::find(capabilities.begin(), capabilities.end(), "BF16") != capabilities.end();
}

std::string shape_text(const std::vector<int64_t>& shape)
{
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + (shape.size() == 1 ? ",)" : ")");
}

// "" when caching is off or no directory is known.
std::string cache_dir()
{
    const char* root = std::getenv("BODYRT_CACHE_DIR");
    if (root != nullptr && std::string(root) == "none") return "";
    if (root != nullptr && *root) return std::string(root) + "/openvino-native";
    const char* xdg = std::getenv("XDG_CACHE_HOME");
    if (xdg != nullptr && *xdg) return std::string(xdg) + "/bodyrt/openvino-native";
    const char* home = std::getenv("HOME");
    if (home != nullptr && *home) return std::string(home) + "/.cache/bodyrt/openvino-native";
    return "";
}

// mkdir -p; false if the directory cannot be made.
bool make_directories(const std::string& path)
{
    for (size_t slash = path.find('/', 1); ; slash = path.find('/', slash + 1)) {
        std::string prefix = path.substr(0, slash);
        if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) return false;
        if (slash == std::string::npos) return true;
    }
}

std::string machine_identity(ov::Core& core)
{
    std::string identity = core.get_property("CPU", ov::device::full_name);
    for (const std::string& capability : core.get_property("CPU", ov::device::capabilities)) identity += "," + capability;
    const ov::Version version = ov::get_openvino_version();
    return identity + ";openvino " + version.buildNumber;
}

}  // namespace

std::string cpu_name()
{
    ov::Core core;
    return core.get_property("CPU", ov::device::full_name);
}

// One stage graph on the CPU plugin at one precision.
class StageRunner {
public:
    StageRunner(ov::Core& core, const std::string& path, const std::string& graph_sha256, const StageSpec& spec,
                const std::string& precision, int threads)
        : core_(core), path_(path), spec_(spec), precision_(precision), threads_(threads)
    {
        identity_ = graph_sha256 + ";" + precision + ";threads " + std::to_string(threads) + ";" + machine_identity(core);
        compiled_for(1);  // the one-person form, at creation
    }

    std::map<std::string, Tensor> infer(const std::map<std::string, Tensor>& tensors, int64_t people)
    {
        Compiled& compiled = compiled_for(people);
        for (const TensorSpec& input : spec_.inputs) {
            auto found = tensors.find(input.name);
            if (found == tensors.end())
                throw BundleError("stage " + spec_.name + ": input " + input.name + " is made by no earlier step");
            const Tensor& tensor = found->second;
            ov::Shape shape(tensor.shape.begin(), tensor.shape.end());
            // OpenVINO reads the caller's memory without copying; the table outlives the request.
            compiled.request.set_tensor(input.name,
                                        ov::Tensor(ov::element::f32, shape, const_cast<float*>(tensor.data.data())));
        }
        compiled.request.infer();
        std::map<std::string, Tensor> outputs;
        for (const std::string& name : compiled.output_names) {
            ov::Tensor result = compiled.request.get_tensor(name);
            if (result.get_element_type() != ov::element::f32)
                throw BundleError(path_ + ": output " + name + " is " + result.get_element_type().get_type_name() +
                                  ", libbodyrt reads float32 outputs only");
            Tensor& out = outputs[name];
            ov::Shape shape = result.get_shape();
            out.shape.assign(shape.begin(), shape.end());
            const float* data = result.data<const float>();
            out.data.assign(data, data + result.get_size());
        }
        return outputs;
    }

private:
    struct Compiled {
        ov::CompiledModel model;
        ov::InferRequest request;
        std::vector<std::string> output_names;
    };

    Compiled& compiled_for(int64_t people)
    {
        bool one = people == 1;
        std::unique_ptr<Compiled>& slot = one ? one_person_ : dynamic_;
        if (slot) return *slot;
        std::map<std::string, ov::PartialShape> shapes;
        std::string shape_key = one ? "people1" : "dynamic";
        for (const TensorSpec& input : spec_.inputs) {
            std::vector<ov::Dimension> dims;
            for (int64_t dim : input.shape) dims.push_back(dim < 0 ? (one ? 1 : -1) : dim);
            shapes[input.name] = ov::PartialShape(dims);
            shape_key += ";" + input.name + shapes[input.name].to_string();
        }
        ov::AnyMap config = {ov::hint::inference_precision(precision_hint(precision_)),
                             ov::inference_num_threads(threads_), ov::num_streams(1),
                             ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
        auto compiled = std::make_unique<Compiled>();
        std::string key = identity_ + ";" + shape_key;
        std::string blob = blob_path(sha256_of_bytes(key.data(), key.size()).substr(0, 24));
        bool loaded = false;
        if (!blob.empty()) {
            std::ifstream stream(blob, std::ios::binary);
            if (stream) {
                try {
                    compiled->model = core_.import_model(stream, "CPU", config);
                    loaded = true;
                } catch (const ov::Exception&) {
                    // unusable (truncated, another build): compile anew and replace it
                }
            }
        }
        if (!loaded) {
            if (!model_) model_ = core_.read_model(path_);
            std::shared_ptr<ov::Model> model = model_;
            if (one) {
                model = model_->clone();
                model->reshape(shapes);
            }
            compiled->model = core_.compile_model(model, "CPU", config);
            if (!blob.empty()) store(compiled->model, blob);
        }
        ov::element::Type ran = compiled->model.get_property(ov::hint::inference_precision);
        if (ran != precision_hint(precision_))
            throw BackendUnavailable(path_ + ": asked for " + precision_ + ", OpenVINO compiled it for " +
                                     ran.get_type_name());
        for (const ov::Output<const ov::Node>& input : compiled->model.inputs())
            if (input.get_element_type() != ov::element::f32)
                throw BundleError(path_ + ": input " + input.get_any_name() + " is not float32");
        for (const ov::Output<const ov::Node>& output : compiled->model.outputs())
            compiled->output_names.push_back(output.get_any_name());
        compiled->request = compiled->model.create_infer_request();
        slot = std::move(compiled);
        return *slot;
    }

    // "" when caching is off or its directory cannot be made.
    std::string blob_path(const std::string& key) const
    {
        std::string directory = cache_dir();
        if (directory.empty() || !make_directories(directory)) return "";
        return directory + "/" + spec_.name + "-" + key + ".blob";
    }

    // Write to a file of this process and thread, then rename: readers never see half a blob.
    static void store(ov::CompiledModel& compiled, const std::string& blob)
    {
        static std::atomic<unsigned> counter{0};
        std::string partial = blob + "." + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".partial";
        try {
            std::ofstream stream(partial, std::ios::binary);
            if (!stream) return;
            compiled.export_model(stream);
            stream.close();
            if (stream.fail() || std::rename(partial.c_str(), blob.c_str()) != 0) std::remove(partial.c_str());
        } catch (const ov::Exception&) {
            std::remove(partial.c_str());
        }
    }

    ov::Core& core_;
    std::string path_;
    StageSpec spec_;
    std::string precision_;
    int threads_;
    std::string identity_;              // what a compiled blob depends on, besides the shapes
    std::shared_ptr<ov::Model> model_;  // read on the first cache miss only
    std::unique_ptr<Compiled> one_person_, dynamic_;
};

namespace {

// OpenVINO's Core is thread-safe and holds the loaded plugins: one per process.
ov::Core& shared_core()
{
    static ov::Core* core = new ov::Core();  // never destroyed: plugins unload at exit, not before
    return *core;
}

const Tensor& lookup(const std::map<std::string, Tensor>& tensors, const std::string& name, const std::string& step)
{
    auto found = tensors.find(name);
    if (found == tensors.end()) throw BundleError("step " + step + " reads " + name + ", which no earlier step made");
    return found->second;
}

}  // namespace

Pipeline::Pipeline(const std::string& bundle_dir, const PipelineOptions& options)
{
    // the options first: they cost nothing to check, the bundle's hashes a second or more
    if (options.backend != "openvino")
        throw BackendUnavailable("unknown backend '" + options.backend +
                                 "'; the native libbodyrt runs 'openvino' (build with --embedded for onnxruntime)");
    const std::string& precision = options.precision;
    if (precision != "fp32" && precision != "bf16" && precision != "int8")
        throw InvalidArgument("options->precision must be fp32, bf16 or int8, got '" + precision + "'");
    manifest_ = read_manifest(bundle_dir);
    ov::Core& core = shared_core();
    if (precision == "bf16" && !cpu_has_bf16(core))
        throw BackendUnavailable("bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this CPU (" +
                                 core.get_property("CPU", ov::device::full_name) + ") has none. Use fp32, or int8 "
                                 "with a quantized bundle variant");
    if (precision == "int8" && !manifest_.has_int8)
        throw BundleError(bundle_dir + ": the bundle has no int8 variant; make one with bodyrt quantize --bundle " +
                          bundle_dir + " --calibration IMAGE_FOLDER");
    try {
        for (const StageSpec& stage : manifest_.stages) {
            std::string file = stage.file, stage_precision = "fp32";
            if (precision == "int8" && !stage.int8_file.empty()) {
                file = stage.int8_file;
                stage_precision = "int8";
            } else if (precision == "bf16" && !stage.keep_fp32) {
                stage_precision = "bf16";
            }
            runners_[stage.name] =
                std::make_unique<StageRunner>(core, bundle_dir + "/" + file, manifest_.files.at(file), stage,
                                              stage_precision, options.threads);
        }
    } catch (const ov::Exception& error) {
        throw BundleError(bundle_dir + ": OpenVINO could not load a stage graph: " + error.what());
    }
}

Pipeline::~Pipeline() = default;

std::map<std::string, Tensor> Pipeline::run(const ImageView& image, const float* person_boxes, int people)
{
    std::map<std::string, Tensor> tensors;
    tensors["person_boxes"] = Tensor{{people, 4}, std::vector<float>(person_boxes, person_boxes + 4 * size_t(people))};
    for (const StepSpec& step : manifest_.steps) {
        switch (step.kind) {
        case StepKind::body_crop: {
            const Tensor& boxes = lookup(tensors, step.boxes, step.name);
            Tensor crops{{people, 3, step.crop_size, step.crop_size}, {}}, transforms{{people, 3, 3}, {}};
            body_crops(image, boxes.data.data(), people, manifest_.preprocessing, step.crop_size, step.box_scale,
                       crops.data, transforms.data);
            tensors[step.crops] = std::move(crops);
            tensors[step.transforms] = std::move(transforms);
            break;
        }
        case StepKind::part_crops: {
            const Tensor& boxes = lookup(tensors, step.boxes, step.name);
            if (boxes.shape.size() != 3 || boxes.shape[0] != people || boxes.shape[2] != 3)
                throw BundleError("step " + step.name + ": " + step.boxes + " is " + shape_text(boxes.shape) +
                                  ", not (people, boxes, 3)");
            Tensor crops{{people, step.part_count, 3, step.crop_size, step.crop_size}, {}};
            part_crops(image, boxes.data.data(), people, int(boxes.shape[1]), step.first_part, step.part_count,
                       step.mirror, manifest_.preprocessing, step.crop_size, crops.data);
            tensors[step.output] = std::move(crops);
            break;
        }
        case StepKind::graph: {
            std::map<std::string, Tensor> outputs;
            try {
                outputs = runners_.at(step.stage)->infer(tensors, people);
            } catch (const ov::Exception& error) {
                throw RuntimeError("stage " + step.stage + ": OpenVINO failed: " + error.what());
            }
            for (auto& [name, tensor] : outputs) tensors[name] = std::move(tensor);
            break;
        }
        case StepKind::pinhole: {
            // float32 throughout, in the order of bodyrt.runtime.pipeline.pinhole_camera
            const Tensor& scale = lookup(tensors, step.scale, step.name);
            const Tensor& translation = lookup(tensors, step.translation, step.name);
            const Tensor& transforms = lookup(tensors, step.crop_transforms, step.name);
            if (scale.data.size() != size_t(people) || translation.data.size() != 2 * size_t(people) ||
                transforms.data.size() != 9 * size_t(people))
                throw BundleError("step " + step.name + ": camera tensors do not hold one entry per person");
            Tensor focal{{people}, std::vector<float>(people, float(step.focal_length))};
            Tensor pinhole{{people, 3}, std::vector<float>(3 * size_t(people))};
            float twice_focal = float(2.0 * step.focal_length);
            for (int person = 0; person < people; ++person) {
                float box_size = float(step.crop_size) / transforms.data[9 * person];
                float depth = twice_focal / (scale.data[person] * box_size);
                pinhole.data[3 * person] = translation.data[2 * person];
                pinhole.data[3 * person + 1] = translation.data[2 * person + 1];
                pinhole.data[3 * person + 2] = depth;
            }
            tensors[step.focal_length_output] = std::move(focal);
            tensors[step.translation_output] = std::move(pinhole);
            break;
        }
        }
    }
    std::map<std::string, Tensor> results;
    for (const std::string& name : manifest_.results) results[name] = lookup(tensors, name, "results");
    return results;
}

}  // namespace bodyrt
