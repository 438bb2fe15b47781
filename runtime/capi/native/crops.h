// crops.h: body and part crops on the host, by the CUDA kernel's own code (kernels/crops.cu compiled
// as C++ through kernels/host_shim.h), with the argument checks the Python runtime makes.
#pragma once

#include <cstdint>
#include <vector>

#include "manifest.h"

namespace bodyrt {

// An interleaved 8-bit image: height rows of width pixels, 3 bytes each, row_stride bytes apart.
struct ImageView {
    const uint8_t* pixels;
    int width, height;
    int64_t row_stride;
    bool bgr;
};

// person_boxes (people, 4) x0, y0, x1, y1 -> crops (people, 3, n, n) and transforms (people, 3, 3).
// Throws InvalidArgument naming the first bad box (as bodyrt.runtime.crops.check_person_boxes).
void body_crops(const ImageView& image, const float* person_boxes, int people, const Preprocessing& preprocessing,
                int crop_size, double box_scale, std::vector<float>& crops, std::vector<float>& transforms);

// part_boxes (people, boxes_per_person, 3) cx, cy, size; crops of the boxes first_part ..
// first_part + part_count - 1 -> (people, part_count, 3, n, n); mirror[j] flips part j.
// Throws InvalidArgument naming a box that is not finite or has a negative size.
void part_crops(const ImageView& image, const float* part_boxes, int people, int boxes_per_person, int first_part,
                int part_count, const std::vector<bool>& mirror, const Preprocessing& preprocessing, int crop_size,
                std::vector<float>& crops);

}  // namespace bodyrt
