// manifest.cpp: the one reader of manifest.json (format 2), with nlohmann::json.
//
// Every value is type-checked as it is read, and a failure names the manifest and the key, e.g.
// "/b/manifest.json: steps[0].crop_size must be an integer". As in runtime/manifest.py (the
// Python parser, the reference for what a manifest may hold), every object's keys are checked:
// an unknown key or a missing required one is an error, so a typo cannot fall back to a default.
// The rest of the library sees the structs of manifest.h.
#include "manifest.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <initializer_list>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "errors.h"
#include "sha256.h"

namespace bodyrt {
namespace {

using nlohmann::json;

constexpr const char* FORMAT_NAME = "bodyrt-bundle";

bool is_directory(const std::string& path)
{
    struct stat info;
    return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

bool is_file(const std::string& path)
{
    struct stat info;
    return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// Typed access to one JSON object, naming the manifest and the key path in every error.
class Reader {
public:
    Reader(const std::string& manifest_path, const json& value, std::string where)
        : manifest_path_(manifest_path), value_(value), where_(std::move(where)) {}

    [[noreturn]] void fail(const std::string& key, const std::string& problem) const
    {
        throw BundleError(manifest_path_ + ": " + where_ + key + " " + problem + "; re-export the bundle");
    }

    const json& at(const std::string& key) const
    {
        if (!value_.is_object()) fail("", "must be an object");
        auto found = value_.find(key);
        if (found == value_.end()) fail(key, "is missing");
        return *found;
    }

    bool has(const std::string& key) const { return value_.is_object() && value_.contains(key); }

    // The object's keys: all of required present, nothing outside required and optional.
    void keys(std::initializer_list<const char*> required, std::initializer_list<const char*> optional = {}) const
    {
        if (!value_.is_object()) fail("", "must be an object");
        std::set<std::string> allowed;
        std::string listed;
        for (auto group : {required, optional})
            for (const char* key : group) {
                allowed.insert(key);
                listed += (listed.empty() ? "" : ", ") + std::string(key);
            }
        for (const auto& item : value_.items())
            if (!allowed.count(item.key())) fail(item.key(), "is an unknown key (allowed: " + listed + ")");
        for (const char* key : required) at(key);
    }

    std::string string(const std::string& key) const
    {
        const json& item = at(key);
        if (!item.is_string()) fail(key, "must be a string");
        return item.get<std::string>();
    }

    int64_t integer(const std::string& key, int64_t minimum) const
    {
        const json& item = at(key);
        if (!item.is_number_integer()) fail(key, "must be an integer");
        int64_t number = item.get<int64_t>();
        if (number < minimum) fail(key, "must be >= " + std::to_string(minimum));
        return number;
    }

    double number(const std::string& key) const
    {
        const json& item = at(key);
        if (!item.is_number() || !std::isfinite(item.get<double>())) fail(key, "must be a finite number");
        return item.get<double>();
    }

    const json& array(const std::string& key) const
    {
        const json& item = at(key);
        if (!item.is_array()) fail(key, "must be a list");
        return item;
    }

    std::vector<std::string> strings(const std::string& key) const
    {
        std::vector<std::string> items;
        for (const json& item : array(key)) {
            if (!item.is_string()) fail(key, "must be a list of strings");
            items.push_back(item.get<std::string>());
        }
        return items;
    }

    Reader child(const json& item, const std::string& name) const { return Reader(manifest_path_, item, where_ + name); }

private:
    const std::string& manifest_path_;
    const json& value_;
    std::string where_;
};

json parse_file(const std::string& manifest_path)
{
    std::ifstream stream(manifest_path, std::ios::binary);
    if (!stream) throw BundleError(manifest_path + ": cannot be opened");
    std::stringstream text;
    text << stream.rdbuf();
    try {
        return json::parse(text.str());
    } catch (const json::exception& error) {
        throw BundleError(manifest_path + ": unreadable manifest (" + error.what() + ")");
    }
}

TensorSpec read_tensor_spec(const Reader& stage, const json& item, size_t index)
{
    Reader input = stage.child(item, "inputs[" + std::to_string(index) + "].");
    input.keys({"name", "shape", "dtype"});
    input.string("dtype");
    TensorSpec spec;
    spec.name = input.string("name");
    for (const json& dim : input.array("shape")) {
        if (dim.is_string())
            spec.shape.push_back(-1);  // the person axis
        else if (dim.is_number_integer() && dim.get<int64_t>() > 0)
            spec.shape.push_back(dim.get<int64_t>());
        else
            input.fail("shape", "must hold positive integers and axis names");
    }
    if (spec.shape.empty() || spec.shape[0] != -1) input.fail("shape", "must start with the person axis");
    return spec;
}

float pixel_divisor_of(const Reader& preprocessing)
{
    double scale = preprocessing.number("pixel_scale");
    if (!(scale > 0.0)) preprocessing.fail("pixel_scale", "must be > 0");
    return float(1.0 / scale);
}

Preprocessing read_preprocessing(const Reader& root)
{
    Reader preprocessing = root.child(root.at("preprocessing"), "preprocessing.");
    preprocessing.keys({"mean", "std", "pixel_scale"});
    Preprocessing result;
    const char* keys[2] = {"mean", "std"};
    float* targets[2] = {result.mean, result.std};
    for (int which = 0; which < 2; ++which) {
        const json& values = preprocessing.array(keys[which]);
        if (values.size() != 3) preprocessing.fail(keys[which], "must hold 3 numbers (R, G, B)");
        for (int channel = 0; channel < 3; ++channel) {
            if (!values[channel].is_number()) preprocessing.fail(keys[which], "must hold 3 numbers (R, G, B)");
            targets[which][channel] = values[channel].get<float>();
        }
    }
    for (float value : result.std)
        if (!(value > 0.0f) || !std::isfinite(value)) preprocessing.fail("std", "must be finite and > 0");
    result.pixel_divisor = pixel_divisor_of(preprocessing);
    return result;
}

StepSpec read_step(const Reader& root, const json& item, size_t index)
{
    Reader reader = root.child(item, "steps[" + std::to_string(index) + "].");
    StepSpec step;
    step.name = reader.string("name");
    std::string op = reader.string("op");
    if (op == "body_crop") {
        reader.keys({"name", "op", "boxes", "crops", "transforms", "crop_size", "box_scale"});
        step.kind = StepKind::body_crop;
        step.boxes = reader.string("boxes");
        step.crops = reader.string("crops");
        step.transforms = reader.string("transforms");
        step.crop_size = int(reader.integer("crop_size", 2));
        step.box_scale = reader.number("box_scale");
        if (!(step.box_scale > 0.0)) reader.fail("box_scale", "must be > 0");
    } else if (op == "part_crops") {
        reader.keys({"name", "op", "boxes", "parts", "mirror", "crop_size", "output"});
        step.kind = StepKind::part_crops;
        step.boxes = reader.string("boxes");
        step.output = reader.string("output");
        step.crop_size = int(reader.integer("crop_size", 2));
        const json& parts = reader.array("parts");
        const json& mirror = reader.array("mirror");
        if (parts.empty() || parts.size() != mirror.size()) reader.fail("parts", "and mirror must be lists of one length");
        for (size_t j = 0; j < parts.size(); ++j) {
            // the crop kernel reads a run of consecutive boxes, and its mirror mask has 32 bits
            if (!parts[j].is_number_integer() || parts[j].get<int64_t>() < 0 || parts[j].get<int64_t>() > 31 ||
                parts[j].get<int64_t>() != parts[0].get<int64_t>() + int64_t(j))
                reader.fail("parts", "must be consecutive box indices in 0..31");
            if (!mirror[j].is_boolean()) reader.fail("mirror", "must hold true or false per part");
            step.mirror.push_back(mirror[j].get<bool>());
        }
        step.first_part = parts[0].get<int>();
        step.part_count = int(parts.size());
    } else if (op == "graph") {
        reader.keys({"name", "op", "stage"});
        step.kind = StepKind::graph;
        step.stage = reader.string("stage");
    } else if (op == "pinhole") {
        reader.keys({"name", "op", "scale", "translation", "crop_transforms", "focal_length", "crop_size",
                     "focal_length_output", "translation_output"});
        step.kind = StepKind::pinhole;
        step.scale = reader.string("scale");
        step.translation = reader.string("translation");
        step.crop_transforms = reader.string("crop_transforms");
        step.focal_length = reader.number("focal_length");
        if (!(step.focal_length > 0.0)) reader.fail("focal_length", "must be > 0");
        step.crop_size = int(reader.integer("crop_size", 1));
        step.focal_length_output = reader.string("focal_length_output");
        step.translation_output = reader.string("translation_output");
    } else {
        reader.fail("op", "is '" + op + "', which this libbodyrt does not run");
    }
    return step;
}

void verify_files(const Manifest& manifest, const std::string& bundle_dir)
{
    for (const auto& [name, expected] : manifest.files) {
        std::string file_path = bundle_dir + "/" + name;
        if (!is_file(file_path)) throw BundleError(file_path + ": listed in the manifest but missing");
        if (sha256_of_file(file_path) != expected)
            throw BundleError(file_path + ": sha256 does not match the manifest (truncated or modified); "
                              "re-export the bundle");
    }
}

}  // namespace

const StageSpec& Manifest::stage(const std::string& name) const
{
    for (const StageSpec& spec : stages)
        if (spec.name == name) return spec;
    throw BundleError(path + ": no stage named '" + name + "'");
}

Manifest read_manifest(const std::string& bundle_dir, bool verify)
{
    std::string manifest_path = bundle_dir + "/manifest.json";
    if (!is_directory(bundle_dir)) throw BundleError(bundle_dir + ": no such bundle directory");
    if (!is_file(manifest_path)) throw BundleError(manifest_path + ": missing; is " + bundle_dir + " a bodyrt bundle?");
    json document = parse_file(manifest_path);
    if (!document.is_object() || !document.contains("format") || document["format"] != FORMAT_NAME)
        throw BundleError(manifest_path + ": not a bodyrt bundle manifest");
    Manifest manifest;
    manifest.path = manifest_path;
    const json& version = document.contains("format_version") ? document["format_version"] : json();
    if (!version.is_number_integer() || version.get<int64_t>() != MANIFEST_FORMAT_VERSION)
        throw BundleError(manifest_path + ": bundle format version " + version.dump() + ", this libbodyrt reads version " +
                          std::to_string(MANIFEST_FORMAT_VERSION) + "; re-export the bundle with this bodyrt");
    manifest.format_version = MANIFEST_FORMAT_VERSION;
    Reader root(manifest_path, document, "");
    root.keys({"format", "format_version", "arch", "created", "tools", "source", "preprocessing", "fp32_stages",
               "stages", "steps", "results", "mesh", "files"},
              {"variants", "gpu"});  // gpu: read by the GPU backends only
    root.string("arch");
    root.string("created");
    if (!root.at("tools").is_object()) root.fail("tools", "must be an object");
    Reader source = root.child(root.at("source"), "source.");
    source.keys({"checkpoint", "checkpoint_sha256", "body_model", "body_model_sha256", "untrained"});

    const json& files = root.at("files");
    if (!files.is_object()) root.fail("files", "must map file names to sha256 digests");
    for (const auto& [name, digest] : files.items()) {
        if (!digest.is_string() || name.empty() || name.find('/') != std::string::npos || name[0] == '.')
            root.fail("files", "must map plain file names to sha256 digests");
        manifest.files[name] = digest.get<std::string>();
    }

    manifest.preprocessing = read_preprocessing(root);
    std::vector<std::string> keep_fp32 = root.strings("fp32_stages");
    std::map<std::string, std::string> int8_files;
    if (root.has("variants")) root.child(root.at("variants"), "variants.").keys({}, {"int8"});
    if (root.has("variants") && root.at("variants").contains("int8")) {
        Reader variant = root.child(root.at("variants")["int8"], "variants.int8.");
        variant.keys({"stages", "method", "calibration", "calibration_deviation", "tools", "created"});
        const json& stages = variant.at("stages");
        if (!stages.is_object()) variant.fail("stages", "must map stage names to files");
        for (const auto& [name, file] : stages.items()) {
            if (!file.is_string()) variant.fail("stages", "must map stage names to files");
            int8_files[name] = file.get<std::string>();
        }
        manifest.has_int8 = true;
    }
    const json& stages = root.array("stages");
    for (size_t index = 0; index < stages.size(); ++index) {
        Reader reader = root.child(stages[index], "stages[" + std::to_string(index) + "].");
        reader.keys({"name", "file", "inputs", "outputs"});
        reader.array("outputs");
        StageSpec stage;
        stage.name = reader.string("name");
        stage.file = reader.string("file");
        if (!manifest.files.count(stage.file)) reader.fail("file", "'" + stage.file + "' is not listed in files");
        const json& inputs = reader.array("inputs");
        for (size_t i = 0; i < inputs.size(); ++i) stage.inputs.push_back(read_tensor_spec(reader, inputs[i], i));
        for (const std::string& name : keep_fp32) stage.keep_fp32 |= name == stage.name;
        auto quantized = int8_files.find(stage.name);
        if (quantized != int8_files.end()) {
            if (!manifest.files.count(quantized->second))
                root.fail("variants.int8.stages", "names '" + quantized->second + "', which is not listed in files");
            stage.int8_file = quantized->second;
        }
        manifest.stages.push_back(stage);
    }
    const json& steps = root.array("steps");
    std::set<std::string> step_names;
    for (size_t index = 0; index < steps.size(); ++index) {
        manifest.steps.push_back(read_step(root, steps[index], index));
        if (!step_names.insert(manifest.steps.back().name).second)
            root.fail("steps[" + std::to_string(index) + "].name", "'" + manifest.steps.back().name + "' is used twice");
        if (manifest.steps.back().kind == StepKind::graph) manifest.stage(manifest.steps.back().stage);
    }
    manifest.results = root.strings("results");

    Reader mesh = root.child(root.at("mesh"), "mesh.");
    mesh.keys({"model", "num_vertices", "faces"});
    int64_t vertex_count = mesh.integer("num_vertices", 1);
    for (const json& face : mesh.array("faces")) {
        if (!face.is_array() || face.size() != 3) mesh.fail("faces", "must be a list of vertex index triples");
        for (const json& vertex : face) {
            if (!vertex.is_number_integer() || vertex.get<int64_t>() < 0 || vertex.get<int64_t>() >= vertex_count)
                mesh.fail("faces", "must hold vertex indices in [0, num_vertices)");
            manifest.faces.push_back(vertex.get<int32_t>());
        }
    }
    // last: a malformed manifest fails in microseconds, not after hashing hundreds of megabytes
    if (verify) verify_files(manifest, bundle_dir);
    return manifest;
}

}  // namespace bodyrt
