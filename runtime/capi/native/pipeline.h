// pipeline.h: a bundle opened on OpenVINO's CPU plugin; runs the manifest's steps on one image.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "crops.h"
#include "manifest.h"

namespace bodyrt {

// A float32 array in C order; the person is on the first axis.
struct Tensor {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

struct PipelineOptions {
    std::string backend = "openvino";
    int threads = 2;              // OpenVINO inference threads per stage
    std::string precision = "fp32";  // fp32, bf16 or int8
};

class StageRunner;

class Pipeline {
public:
    Pipeline(const std::string& bundle_dir, const PipelineOptions& options);
    ~Pipeline();

    // image and person_boxes (people, 4) -> the manifest's results, by name.
    std::map<std::string, Tensor> run(const ImageView& image, const float* person_boxes, int people);

    const std::vector<int32_t>& faces() const { return manifest_.faces; }

private:
    Manifest manifest_;
    std::map<std::string, std::unique_ptr<StageRunner>> runners_;
};

// The CPU's name as OpenVINO reports it, and whether it runs bf16 natively.
std::string cpu_name();

}  // namespace bodyrt
