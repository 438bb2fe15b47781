// crops.cpp: the crop kernels of kernels/crops.cu, run on the host (one emulated thread per crop
// pixel, as kernels/crops_host.cpp runs them for the tests), behind typed functions.
//
// The kernels take the pixel divisor (the inverse of the manifest's preprocessing.pixel_scale).
#include "crops.h"

#include <cmath>
#include <cstdio>
#include <string>

#include "errors.h"
#include "host_shim.h"
#include "crops.cu"

namespace bodyrt {
namespace {

constexpr double MAX_BOX_COORDINATE = 1073741824.0;  // 2^30, the kernel's BODY_RECT_LIMIT

dim3 crop_grid(int crop_size, int crop_count)
{
    return dim3{unsigned(crop_size + 31) / 32, unsigned(crop_size + 7) / 8, unsigned(crop_count)};
}

const dim3 CROP_BLOCK{32, 8, 1};

std::string format_box(const char* what, int index, const char* fields, const double* values, int count)
{
    char text[256];
    int used = std::snprintf(text, sizeof text, "%s %d %s = (", what, index, fields);
    for (int i = 0; i < count && used < int(sizeof text); ++i)
        used += std::snprintf(text + used, sizeof text - used, i ? ", %g" : "%g", values[i]);
    return std::string(text) + ")";
}

void check_person_boxes(const float* boxes, int people, int width, int height, double box_scale)
{
    for (int index = 0; index < people; ++index) {
        double box[4] = {boxes[4 * index], boxes[4 * index + 1], boxes[4 * index + 2], boxes[4 * index + 3]};
        double x0 = box[0], y0 = box[1], x1 = box[2], y1 = box[3];
        const char* problem = nullptr;
        std::string outside;
        if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) {
            problem = "is not finite";
        } else if (x1 <= x0 || y1 <= y0) {
            problem = "is empty or inverted (needs x1 > x0 and y1 > y0)";
        } else if (x1 <= 0 || y1 <= 0 || x0 >= width || y0 >= height) {
            outside = "is entirely outside the " + std::to_string(width) + "x" + std::to_string(height) + " image";
            problem = outside.c_str();
        } else {
            double centre_x = (x0 + x1) / 2.0, centre_y = (y0 + y1) / 2.0;
            double size = box_scale * std::fmax(x1 - x0, y1 - y0);
            double left = std::trunc(centre_x - size / 2.0), right = std::trunc(centre_x + size / 2.0);
            double top = std::trunc(centre_y - size / 2.0), bottom = std::trunc(centre_y + size / 2.0);
            if (right - left <= 0 || bottom - top <= 0)
                problem = "is too small: its integer crop rectangle is empty";
            else if (std::fmax(std::fmax(std::fabs(left), std::fabs(top)), std::fmax(std::fabs(right), std::fabs(bottom))) >=
                     MAX_BOX_COORDINATE)
                problem = "is too large: its crop rectangle reaches beyond 1073741824 px";
        }
        if (problem)
            throw InvalidArgument(format_box("person box", index, "(x0, y0, x1, y1)", box, 4) + " " + problem);
    }
}

}  // namespace

void body_crops(const ImageView& image, const float* person_boxes, int people, const Preprocessing& preprocessing,
                int crop_size, double box_scale, std::vector<float>& crops, std::vector<float>& transforms)
{
    check_person_boxes(person_boxes, people, image.width, image.height, box_scale);
    crops.assign(size_t(people) * 3 * crop_size * crop_size, 0.0f);
    transforms.assign(size_t(people) * 9, 0.0f);
    const float* mean = preprocessing.mean;
    const float* std = preprocessing.std;
    float* out = crops.data();
    float* transform_out = transforms.data();
    emulate_launch(crop_grid(crop_size, people), CROP_BLOCK, [&] {
        body_crops_f32(image.pixels, image.height, image.width, (long long)image.row_stride, image.bgr ? 1 : 0, mean[0],
                       mean[1], mean[2], std[0], std[1], std[2], preprocessing.pixel_divisor, person_boxes, box_scale, crop_size, out, transform_out);
    });
}

void part_crops(const ImageView& image, const float* part_boxes, int people, int boxes_per_person, int first_part,
                int part_count, const std::vector<bool>& mirror, const Preprocessing& preprocessing, int crop_size,
                std::vector<float>& crops)
{
    if (first_part < 0 || first_part + part_count > boxes_per_person || part_count < 1 || first_part + part_count > 32)
        throw BundleError("part crops of boxes " + std::to_string(first_part) + ".." +
                          std::to_string(first_part + part_count - 1) + " but the body stage gives " +
                          std::to_string(boxes_per_person) + " boxes per person");
    unsigned int mirror_mask = 0;
    for (int j = 0; j < part_count; ++j)
        if (mirror[j]) mirror_mask |= 1u << (first_part + j);
    for (int person = 0; person < people; ++person) {
        for (int j = 0; j < part_count; ++j) {
            const float* box = part_boxes + 3 * (size_t(person) * boxes_per_person + first_part + j);
            double values[3] = {box[0], box[1], box[2]};
            if (!std::isfinite(values[0]) || !std::isfinite(values[1]) || !std::isfinite(values[2]) || values[2] < 0)
                throw RuntimeError(format_box("part box", person * part_count + j, "(cx, cy, size)", values, 3) +
                                   " is not finite or has a negative size");
        }
    }
    int crop_count = people * part_count;
    crops.assign(size_t(crop_count) * 3 * crop_size * crop_size, 0.0f);
    const float* mean = preprocessing.mean;
    const float* std = preprocessing.std;
    float* out = crops.data();
    emulate_launch(crop_grid(crop_size, crop_count), CROP_BLOCK, [&] {
        part_crops_f32(image.pixels, image.height, image.width, (long long)image.row_stride, image.bgr ? 1 : 0,
                       mean[0], mean[1], mean[2], std[0], std[1], std[2], preprocessing.pixel_divisor, part_boxes, boxes_per_person, first_part,
                       part_count, mirror_mask, crop_size, out);
    });
}

}  // namespace bodyrt
