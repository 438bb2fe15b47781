// crops.cu: the body crop and the hand/face crops, cut on the GPU from the full-resolution image.
//
// Reference: shared/REFERENCE.md section 2. The CPU references are torch grid_sample (part crops),
// cv2.resize (body crop) and bodyrt.runtime.crops; tests/test_kernel_host.py runs this very file on
// the CPU (g++ with host_shim.h) against them. Launch interface: kernels/README.md and
// bodyrt.kernels.launch, which builds the grid, the block and the argument list.
//
// Source image: uint8, interleaved H x W x 3, RGB or BGR (bgr != 0), `pitch` bytes between rows.
// Output: NCHW, channels in RGB order, float32 (*_f32) or IEEE half bits (*_f16).
// mean_* and std_* are the normalisation constants in RGB order, pixel_divisor the bundle's pixel scale
// inverted (255 for 8-bit images): value = (pixel / pixel_divisor - mean) / std.
//
// One thread per output pixel, computing its three channels: threads (x, y) of the grid are crop
// column and row, blockIdx.z is the crop. Any block shape works; bodyrt.kernels.launch uses (32, 8, 1)
// with grid (ceil(n / 32), ceil(n / 8), number of crops) for n x n crops.
//
// Positions are computed in double: a float32 coordinate near x = 1000 is off by up to 6e-5 px,
// which on a sharp edge moves the output by 3e-4, well above the 1e-5 the crops are held to.
// Double divisions are what cost on GPUs whose float64 rate is 1/64 of float32 (L4, L40S, RTX):
// every thread of a block cuts the same crop (blockIdx.z), so the block's first thread computes the
// crop's constants once (a step or a scale per axis, with their float64 divisions) into shared memory,
// and the per-pixel position arithmetic only multiplies and adds. The float32 normalisation keeps its
// divisions (full rate in float32), so the values stay bit for bit those of the CPU references.

struct Taps {
    int first, second;                 // pixel indices along one axis, always inside the image
    float first_weight, second_weight; // zero for a tap that falls outside the image
};

// True for finite values: inf - inf and NaN - NaN are NaN. (isfinite is not declared everywhere.)
__host__ __device__ inline bool is_finite(double value) { return value - value == 0.0; }

__host__ __device__ inline int clamp_index(int index, int length)
{
    return index < 0 ? 0 : (index >= length ? length - 1 : index);
}

__host__ __device__ inline Taps taps_with_zero_outside(int first, float fraction, int length)
{
    Taps taps;
    taps.first_weight = (first >= 0 && first < length) ? 1.0f - fraction : 0.0f;
    taps.second_weight = (first + 1 >= 0 && first + 1 < length) ? fraction : 0.0f;
    // An outside tap still reads a real pixel, which its zero weight then cancels.
    taps.first = clamp_index(first, length);
    taps.second = clamp_index(first + 1, length);
    return taps;
}

__host__ __device__ inline float unit_pixel(const unsigned char* image, long long pitch, int row, int column,
                                            int source_channel, float divisor)
{
    return (float)image[row * pitch + column * 3 + source_channel] / divisor;
}

// ---------------------------------------------------------------------------------------------
// Part crops: grid_sample(normalised image, bilinear, zero padding, align_corners=True).

// Crop pixel `index` of n samples centre - size/2 + size * index/(n-1) (pixel centres at integers):
// first + step * index, with first = centre - size/2 and step = size/(n-1) per crop (part_crop).
__host__ __device__ inline double part_crop_position(double first, double step, int index)
{
    return first + step * (double)index;
}

__host__ __device__ inline Taps part_crop_taps(double position, int length)
{
    // Beyond [-1, length] both taps are outside; the clamp keeps floor() inside int range.
    position = fmin(fmax(position, -2.0), (double)length + 1.0);
    double first = floor(position);
    return taps_with_zero_outside((int)first, (float)(position - first), length);
}

// Zero padding in normalised space: each tap is normalised first, so an outside tap adds 0, not -mean/std.
__host__ __device__ inline float part_crop_value(const unsigned char* image, long long pitch, Taps rows, Taps columns,
                                                 int source_channel, float mean, float std, float divisor)
{
    float top_left = (unit_pixel(image, pitch, rows.first, columns.first, source_channel, divisor) - mean) / std;
    float top_right = (unit_pixel(image, pitch, rows.first, columns.second, source_channel, divisor) - mean) / std;
    float bottom_left = (unit_pixel(image, pitch, rows.second, columns.first, source_channel, divisor) - mean) / std;
    float bottom_right = (unit_pixel(image, pitch, rows.second, columns.second, source_channel, divisor) - mean) / std;
    float top = columns.first_weight * top_left + columns.second_weight * top_right;
    float bottom = columns.first_weight * bottom_left + columns.second_weight * bottom_right;
    return rows.first_weight * top + rows.second_weight * bottom;
}

// ---------------------------------------------------------------------------------------------
// Body crop: integer rectangle [ul, br), zero outside the image, cv2.resize INTER_LINEAR, normalise.

struct BodyRect {
    double centre_x, centre_y, size; // the float crop transform's inputs, full-image pixels
    int left, top, width, height;    // the integer rectangle the pixels are cut from
    bool valid;
};

// Corners beyond 2^30 px are rejected (bodyrt.runtime.crops.MAX_BOX_COORDINATE), so ints never overflow.
#define BODY_RECT_LIMIT 1073741824.0

__host__ __device__ inline BodyRect body_rect(const float* box, double box_scale)
{
    double x0 = box[0], y0 = box[1], x1 = box[2], y1 = box[3];
    BodyRect rect;
    rect.centre_x = (x0 + x1) / 2.0;
    rect.centre_y = (y0 + y1) / 2.0;
    rect.size = box_scale * fmax(x1 - x0, y1 - y0);
    double left = trunc(rect.centre_x - rect.size / 2.0), right = trunc(rect.centre_x + rect.size / 2.0);
    double top = trunc(rect.centre_y - rect.size / 2.0), bottom = trunc(rect.centre_y + rect.size / 2.0);
    rect.valid = is_finite(x0) && is_finite(y0) && is_finite(x1) && is_finite(y1) && x1 > x0 && y1 > y0
              && right > left && bottom > top && fabs(left) < BODY_RECT_LIMIT && fabs(right) < BODY_RECT_LIMIT
              && fabs(top) < BODY_RECT_LIMIT && fabs(bottom) < BODY_RECT_LIMIT;
    rect.left = rect.valid ? (int)left : 0;
    rect.top = rect.valid ? (int)top : 0;
    rect.width = rect.valid ? (int)(right - left) : 0;
    rect.height = rect.valid ? (int)(bottom - top) : 0;
    return rect;
}

// One axis of cv2.resize INTER_LINEAR from `rect_length` pixels starting at image pixel `rect_origin`
// to `crop_size` pixels: source (index + 0.5) * scale - 0.5 in double, clamped to the rectangle's edge
// pixels. (OpenCV 4 rounded the source to float first; for crop_size 256 both are exact, as
// (index + 0.5) * rect_length / 256 is a short binary fraction. The double form matches OpenCV 5 at
// any crop size.)
// scale = rect_length / crop_size, once per crop (body_crop).
__host__ __device__ inline Taps body_crop_taps(int index, double scale, int rect_origin, int rect_length, int length)
{
    double source = (index + 0.5) * scale - 0.5;
    double first_position = floor(source);
    int first = (int)first_position;
    float fraction = (float)(source - first_position);
    if (first < 0) {
        first = 0;
        fraction = 0.0f;
    }
    if (first >= rect_length - 1) {
        first = rect_length - 1;
        fraction = 0.0f;
    }
    // At the right edge the second tap may lie past the rectangle, but its weight is 0 there.
    return taps_with_zero_outside(rect_origin + first, fraction, length);
}

// Zero padding before normalisation: outside taps add 0 to the [0, 1] value, which is then normalised.
__host__ __device__ inline float body_crop_value(const unsigned char* image, long long pitch, Taps rows, Taps columns,
                                                 int source_channel, float mean, float std, float divisor)
{
    float top = unit_pixel(image, pitch, rows.first, columns.first, source_channel, divisor)
                  * columns.first_weight
              + unit_pixel(image, pitch, rows.first, columns.second, source_channel, divisor)
                  * columns.second_weight;
    float bottom = unit_pixel(image, pitch, rows.second, columns.first, source_channel, divisor)
                     * columns.first_weight
                 + unit_pixel(image, pitch, rows.second, columns.second, source_channel, divisor)
                     * columns.second_weight;
    return (top * rows.first_weight + bottom * rows.second_weight - mean) / std;
}

// Row-major 3x3, full-image pixels -> crop pixels: diagonal n/S, translation n*(0.5 - c/S); zeros if invalid.
__host__ __device__ inline void body_crop_transform(BodyRect rect, int crop_size, float* transform)
{
    for (int i = 0; i < 9; ++i) transform[i] = 0.0f;
    if (!rect.valid) return;
    transform[0] = (float)(crop_size / rect.size);
    transform[2] = (float)(crop_size * (0.5 - rect.centre_x / rect.size));
    transform[4] = (float)(crop_size / rect.size);
    transform[5] = (float)(crop_size * (0.5 - rect.centre_y / rect.size));
    transform[8] = 1.0f;
}

// ---------------------------------------------------------------------------------------------
// Per-crop constants: computed by a block's first thread, read by all its threads.

struct PartCrop {
    double first_x, first_y, step; // sample u is at first_x + step * u (and v alike), full-image pixels
    bool mirrored, valid;          // valid: a finite box with a size >= 0
};

__host__ __device__ inline PartCrop part_crop(const float* box, int crop_size, bool mirrored)
{
    double centre_x = box[0], centre_y = box[1], size = box[2];
    PartCrop crop;
    crop.valid = is_finite(centre_x) && is_finite(centre_y) && is_finite(size) && size >= 0.0;
    crop.first_x = crop.valid ? centre_x - size / 2.0 : 0.0;
    crop.first_y = crop.valid ? centre_y - size / 2.0 : 0.0;
    crop.step = crop.valid ? size / (double)(crop_size - 1) : 0.0; // the one float64 division of the crop
    crop.mirrored = mirrored;
    return crop;
}

struct BodyCrop {
    BodyRect rect;
    double scale_x, scale_y; // rectangle pixels per crop pixel
};

__host__ __device__ inline BodyCrop body_crop(const float* box, double box_scale, int crop_size)
{
    BodyCrop crop;
    crop.rect = body_rect(box, box_scale);
    // OpenCV's form, 1 / (n / length): the same bits as cv2.resize's scale
    crop.scale_x = 1.0 / ((double)crop_size / (double)crop.rect.width);
    crop.scale_y = 1.0 / ((double)crop_size / (double)crop.rect.height);
    return crop;
}

// ---------------------------------------------------------------------------------------------
// Stores and kernels.

#ifdef __CUDACC__
// float -> IEEE half bits, round to nearest even. The host build's half_bits is in host_shim.h.
__device__ inline unsigned short half_bits(float value)
{
    unsigned short bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    return bits;
}
#endif

__device__ inline void store(float* destination, float value) { *destination = value; }
__device__ inline void store(unsigned short* destination, float value) { *destination = half_bits(value); }

template <typename Out>
__device__ inline void store_pixel(Out* pixel, long long plane, float red, float green, float blue)
{
    store(pixel, red);
    store(pixel + plane, green);
    store(pixel + 2 * plane, blue);
}

// part_boxes: the body engine's (people, boxes_per_person, 3) rows of (cx, cy, S), full-image pixels.
// Crop k = person * parts_per_person + j reads box (person, first_part + j) and is mirrored
// horizontally when bit (first_part + j) of mirror_mask is set. A box with a non-finite value or a
// negative size gives an all-zero crop (it lives on the device, so nothing can raise here).
template <typename Out>
__device__ void cut_part_crops(const unsigned char* image, int height, int width, long long pitch, int bgr,
                               float mean_r, float mean_g, float mean_b, float std_r, float std_g, float std_b,
                               float pixel_divisor,
                               const float* part_boxes, int boxes_per_person, int first_part, int parts_per_person,
                               unsigned int mirror_mask, int crop_size, Out* out)
{
    int k = blockIdx.z;
    __shared__ PartCrop crop;
    if (threadIdx.x == 0 && threadIdx.y == 0) { // before any thread returns: every thread reaches the barrier
        int part = first_part + k % parts_per_person;
        crop = part_crop(part_boxes + 3 * ((long long)(k / parts_per_person) * boxes_per_person + part), crop_size,
                         (mirror_mask >> part) & 1u);
    }
    __syncthreads();
    int u = blockIdx.x * blockDim.x + threadIdx.x;
    int v = blockIdx.y * blockDim.y + threadIdx.y;
    if (u >= crop_size || v >= crop_size) return;
    long long plane = (long long)crop_size * crop_size;
    Out* pixel = out + (long long)k * 3 * plane + (long long)v * crop_size + u;
    if (!crop.valid) {
        store_pixel(pixel, plane, 0.0f, 0.0f, 0.0f);
        return;
    }
    // Mirrored: crop column u holds what column n-1-u would.
    int column = crop.mirrored ? crop_size - 1 - u : u;
    Taps columns = part_crop_taps(part_crop_position(crop.first_x, crop.step, column), width);
    Taps rows = part_crop_taps(part_crop_position(crop.first_y, crop.step, v), height);
    store_pixel(pixel, plane, part_crop_value(image, pitch, rows, columns, bgr ? 2 : 0, mean_r, std_r, pixel_divisor),
                part_crop_value(image, pitch, rows, columns, 1, mean_g, std_g, pixel_divisor),
                part_crop_value(image, pitch, rows, columns, bgr ? 0 : 2, mean_b, std_b, pixel_divisor));
}

// person_boxes (people, 4) x0, y0, x1, y1 full-image pixels -> out (people, 3, n, n) and transforms
// (people, 3, 3) float32. An invalid box (non-finite, empty, inverted, empty integer rectangle) gives
// an all-zero crop and transform; the host rejects such boxes before uploading them.
template <typename Out>
__device__ void cut_body_crops(const unsigned char* image, int height, int width, long long pitch, int bgr,
                               float mean_r, float mean_g, float mean_b, float std_r, float std_g, float std_b,
                               float pixel_divisor,
                               const float* person_boxes, double box_scale, int crop_size, Out* out,
                               float* transforms)
{
    int k = blockIdx.z;
    __shared__ BodyCrop crop;
    if (threadIdx.x == 0 && threadIdx.y == 0) // before any thread returns: every thread reaches the barrier
        crop = body_crop(person_boxes + 4 * (long long)k, box_scale, crop_size);
    __syncthreads();
    int u = blockIdx.x * blockDim.x + threadIdx.x;
    int v = blockIdx.y * blockDim.y + threadIdx.y;
    if (u >= crop_size || v >= crop_size) return;
    long long plane = (long long)crop_size * crop_size;
    Out* pixel = out + (long long)k * 3 * plane + (long long)v * crop_size + u;
    if (u == 0 && v == 0) body_crop_transform(crop.rect, crop_size, transforms + 9 * (long long)k);
    if (!crop.rect.valid) {
        store_pixel(pixel, plane, 0.0f, 0.0f, 0.0f);
        return;
    }
    Taps columns = body_crop_taps(u, crop.scale_x, crop.rect.left, crop.rect.width, width);
    Taps rows = body_crop_taps(v, crop.scale_y, crop.rect.top, crop.rect.height, height);
    store_pixel(pixel, plane, body_crop_value(image, pitch, rows, columns, bgr ? 2 : 0, mean_r, std_r, pixel_divisor),
                body_crop_value(image, pitch, rows, columns, 1, mean_g, std_g, pixel_divisor),
                body_crop_value(image, pitch, rows, columns, bgr ? 0 : 2, mean_b, std_b, pixel_divisor));
}

// The entry points, extern "C" for cuModuleGetFunction. bodyrt.kernels.launch.KERNEL_PARAMETERS lists
// the same parameters in the same order; tests/test_kernel_host.py checks the two agree.

extern "C" __global__ void part_crops_f32(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                          float mean_r, float mean_g, float mean_b,
                                          float std_r, float std_g, float std_b, float pixel_divisor,
                                          const float* part_boxes, int boxes_per_person, int first_part,
                                          int parts_per_person, unsigned int mirror_mask, int crop_size, float* out)
{
    cut_part_crops(image, height, width, pitch, bgr, mean_r, mean_g, mean_b, std_r, std_g, std_b, pixel_divisor,
                   part_boxes, boxes_per_person, first_part, parts_per_person, mirror_mask, crop_size, out);
}

extern "C" __global__ void part_crops_f16(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                          float mean_r, float mean_g, float mean_b,
                                          float std_r, float std_g, float std_b, float pixel_divisor,
                                          const float* part_boxes, int boxes_per_person, int first_part,
                                          int parts_per_person, unsigned int mirror_mask, int crop_size,
                                          unsigned short* out)
{
    cut_part_crops(image, height, width, pitch, bgr, mean_r, mean_g, mean_b, std_r, std_g, std_b, pixel_divisor,
                   part_boxes, boxes_per_person, first_part, parts_per_person, mirror_mask, crop_size, out);
}

extern "C" __global__ void body_crops_f32(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                          float mean_r, float mean_g, float mean_b,
                                          float std_r, float std_g, float std_b, float pixel_divisor,
                                          const float* person_boxes, double box_scale, int crop_size, float* out,
                                          float* transforms)
{
    cut_body_crops(image, height, width, pitch, bgr, mean_r, mean_g, mean_b, std_r, std_g, std_b, pixel_divisor,
                   person_boxes, box_scale, crop_size, out, transforms);
}

extern "C" __global__ void body_crops_f16(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                          float mean_r, float mean_g, float mean_b,
                                          float std_r, float std_g, float std_b, float pixel_divisor,
                                          const float* person_boxes, double box_scale, int crop_size,
                                          unsigned short* out, float* transforms)
{
    cut_body_crops(image, height, width, pitch, bgr, mean_r, mean_g, mean_b, std_r, std_g, std_b, pixel_divisor,
                   person_boxes, box_scale, crop_size, out, transforms);
}
