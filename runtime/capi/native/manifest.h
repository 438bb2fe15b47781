// manifest.h: what the native runtime needs from a bundle's manifest.json, as plain structs.
//
// manifest.cpp is the only file that reads the manifest: every key, type and format version is
// checked there, so a change of the bundle format touches that file alone.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace bodyrt {

constexpr int MANIFEST_FORMAT_VERSION = 2;

// One graph input: its name and shape, -1 on the person axis ("people" in the manifest).
struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;
};

struct StageSpec {
    std::string name;
    std::string file;           // the fp32 graph
    std::string int8_file;      // the quantized graph of the int8 variant, or "" if it has none
    bool keep_fp32 = false;     // in the manifest's fp32_stages: never run at bf16
    std::vector<TensorSpec> inputs;
};

enum class StepKind { body_crop, part_crops, graph, pinhole };

// One step of the pipeline; the fields its kind uses are set, the others stay empty.
struct StepSpec {
    StepKind kind = StepKind::graph;
    std::string name;
    // body_crop: boxes -> crops, transforms; part_crops: boxes -> output
    std::string boxes;
    std::string crops, transforms;
    std::string output;
    int crop_size = 0;
    double box_scale = 0.0;
    int first_part = 0;          // part_crops: the boxes first_part .. first_part + part_count - 1
    int part_count = 0;
    std::vector<bool> mirror;    // part_crops: per part, flipped horizontally
    // graph
    std::string stage;
    // pinhole: scale, translation, crop_transforms -> focal_length_output, translation_output
    std::string scale, translation, crop_transforms;
    double focal_length = 0.0;
    std::string focal_length_output, translation_output;
};

// The image normalisation: value = (pixel / pixel_divisor - mean) / std, RGB order.
struct Preprocessing {
    float mean[3] = {0, 0, 0};
    float std[3] = {1, 1, 1};
    float pixel_divisor = 255.0f;
};

struct Manifest {
    std::string path;  // of manifest.json, for messages
    int format_version = 0;
    Preprocessing preprocessing;
    std::vector<StageSpec> stages;
    std::vector<StepSpec> steps;
    std::vector<std::string> results;
    std::vector<int32_t> faces;  // (face_count, 3)
    std::map<std::string, std::string> files;  // file name -> sha256 hex
    bool has_int8 = false;

    const StageSpec& stage(const std::string& name) const;
};

// Read bundle_dir/manifest.json, check its format and every field used, and (verify_files) every
// listed file's presence and sha256. Throws BundleError naming the file and the key at fault.
Manifest read_manifest(const std::string& bundle_dir, bool verify_files = true);

}  // namespace bodyrt
