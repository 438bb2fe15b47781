// crops.cu: the body crop and the hand/face crops, cut on the GPU from the full-resolution image.
//
// Reference: shared/REFERENCE.md section 2. The CPU reference is bodyrt.runtime.crops; the
// validation (tests/test_kernel_host.py) runs this file on the CPU through host_shim.h against
// torch grid_sample and cv2.resize.
//
// Source image: uint8, interleaved H x W x 3, RGB or BGR, `pitch` bytes between rows.
// Output: NCHW, channels always in RGB order, float32 or float16 (the *_f16 entry points write
// IEEE half bits). `normalisation` is a device array of 6 floats: mean[3], std[3] (RGB order).
//
// Launch both kernels with block (CROP_BLOCK_WIDTH, 1, 1) and
// grid (ceil(crop_size / CROP_BLOCK_WIDTH), crop_size, number of crops): one thread per output
// pixel, computing its three channels.
//
// Positions are computed in double: a float32 coordinate near x = 1000 is off by up to 6e-5 px,
// which on a sharp edge moves the output by 3e-4, well above the 1e-5 the crops are held to.

#define CROP_BLOCK_WIDTH 128

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
    int second = first + 1;
    Taps taps;
    taps.first_weight = (first >= 0 && first < length) ? 1.0f - fraction : 0.0f;
    taps.second_weight = (second >= 0 && second < length) ? fraction : 0.0f;
    // An outside tap still reads a real pixel, which its zero weight then cancels.
    taps.first = clamp_index(first, length);
    taps.second = clamp_index(second, length);
    return taps;
}

// ---------------------------------------------------------------------------------------------
// Part crops: grid_sample(normalised image, bilinear, zero padding, align_corners=True).

// Crop pixel `index` of `crop_size` samples centre - size/2 + size * index/(crop_size-1) (pixels,
// centres at integers), in the order of operations the PyTorch reference uses.
__host__ __device__ inline double part_crop_position(double centre, double size, int index, int crop_size)
{
    return (centre - size / 2.0) + size * ((double)index / (double)(crop_size - 1));
}

__host__ __device__ inline Taps part_crop_taps(double position, int length)
{
    // Beyond [-1, length] both taps are outside; the clamp keeps floor() inside int range.
    position = fmin(fmax(position, -2.0), (double)length + 1.0);
    double first = floor(position);
    return taps_with_zero_outside((int)first, (float)(position - first), length);
}

__host__ __device__ inline float normalised_pixel(const unsigned char* image, long long pitch, int row, int column,
                                                  int source_channel, float mean, float std)
{
    float value = (float)image[row * pitch + column * 3 + source_channel] / 255.0f;
    return (value - mean) / std;
}

// Zero padding happens in normalised space here: an outside tap adds nothing to the normalised value.
__host__ __device__ inline float part_crop_value(const unsigned char* image, long long pitch, Taps rows, Taps columns,
                                                 int source_channel, float mean, float std)
{
    float top = columns.first_weight * normalised_pixel(image, pitch, rows.first, columns.first, source_channel, mean, std)
              + columns.second_weight * normalised_pixel(image, pitch, rows.first, columns.second, source_channel, mean, std);
    float bottom = columns.first_weight * normalised_pixel(image, pitch, rows.second, columns.first, source_channel, mean, std)
                 + columns.second_weight * normalised_pixel(image, pitch, rows.second, columns.second, source_channel, mean, std);
    return rows.first_weight * top + rows.second_weight * bottom;
}

// ---------------------------------------------------------------------------------------------
// Body crop: integer rectangle [ul, br), zero outside the image, cv2.resize INTER_LINEAR, normalise.

struct BodyRect {
    double centre_x, centre_y, size; // float crop transform inputs, full-image pixels
    int left, top, width, height;    // integer rectangle the pixels are cut from
    bool valid;
};

// Corners beyond this many pixels are rejected, so rectangle arithmetic stays in int.
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

// One axis of cv2.resize INTER_LINEAR from a rectangle of `rect_length` pixels starting at image
// pixel `rect_origin` to `crop_size` pixels. The source position is rounded to float before the
// floor, and clamped to the rectangle's edge pixels, exactly as OpenCV computes its tables.
__host__ __device__ inline Taps body_crop_taps(int index, int crop_size, int rect_origin, int rect_length, int length)
{
    double scale = 1.0 / ((double)crop_size / (double)rect_length);
    float source = (float)((index + 0.5) * scale - 0.5);
    int first = (int)floor(source);
    float fraction = source - (float)first;
    if (first < 0) {
        first = 0;
        fraction = 0.0f;
    }
    if (first >= rect_length - 1) {
        first = rect_length - 1;
        fraction = 0.0f;
    }
    // With fraction 0 at the right edge the second tap may lie past the rectangle: its weight is 0.
    return taps_with_zero_outside(rect_origin + first, fraction, length);
}

__host__ __device__ inline float unit_pixel(const unsigned char* image, long long pitch, int row, int column, int source_channel)
{
    return (float)image[row * pitch + column * 3 + source_channel] / 255.0f;
}

// Zero padding happens before normalisation here: outside taps add nothing to the [0, 1] value.
__host__ __device__ inline float body_crop_value(const unsigned char* image, long long pitch, Taps rows, Taps columns,
                                                 int source_channel, float mean, float std)
{
    float top = unit_pixel(image, pitch, rows.first, columns.first, source_channel) * columns.first_weight
              + unit_pixel(image, pitch, rows.first, columns.second, source_channel) * columns.second_weight;
    float bottom = unit_pixel(image, pitch, rows.second, columns.first, source_channel) * columns.first_weight
                 + unit_pixel(image, pitch, rows.second, columns.second, source_channel) * columns.second_weight;
    float value = top * rows.first_weight + bottom * rows.second_weight;
    return (value - mean) / std;
}

// Row-major 3x3, full-image pixels -> crop pixels: diag k = crop_size/S, translation crop_size*(0.5 - c/S).
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

// boxes: rows of (cx, cy, S) full-image pixels; crop k reads row box_rows[k] (k when box_rows is
// null), so the kernel can read hands and faces straight out of the body engine's (N, 3, 3) boxes.
// mirror[k] != 0 flips crop k horizontally (the left hand); mirror may be null. A box with a
// non-finite value or a negative size gives an all-zero crop (the CPU path raises instead).
template <typename Out>
__device__ void cut_part_crops(const unsigned char* image, int height, int width, long long pitch, int bgr,
                               const float* normalisation, const float* boxes, const int* box_rows,
                               const unsigned char* mirror, int crop_size, Out* out)
{
    int u = blockIdx.x * blockDim.x + threadIdx.x;
    int v = blockIdx.y;
    int k = blockIdx.z;
    if (u >= crop_size) return;
    long long plane = (long long)crop_size * crop_size;
    Out* pixel = out + (long long)k * 3 * plane + (long long)v * crop_size + u;

    const float* box = boxes + 3 * (long long)(box_rows ? box_rows[k] : k);
    double centre_x = box[0], centre_y = box[1], size = box[2];
    if (!is_finite(centre_x) || !is_finite(centre_y) || !is_finite(size) || size < 0.0) {
        for (int c = 0; c < 3; ++c) store(pixel + c * plane, 0.0f);
        return;
    }
    // Mirrored: crop column u holds what column crop_size-1-u would.
    int column = (mirror && mirror[k]) ? crop_size - 1 - u : u;
    Taps columns = part_crop_taps(part_crop_position(centre_x, size, column, crop_size), width);
    Taps rows = part_crop_taps(part_crop_position(centre_y, size, v, crop_size), height);
    for (int c = 0; c < 3; ++c) {
        int source_channel = bgr ? 2 - c : c;
        store(pixel + c * plane, part_crop_value(image, pitch, rows, columns, source_channel,
                                                 normalisation[c], normalisation[3 + c]));
    }
}

// person_boxes (N, 4) x0, y0, x1, y1 full-image pixels -> out (N, 3, crop_size, crop_size) and
// transforms (N, 3, 3) float32. An invalid box (non-finite, empty, inverted, empty rectangle) gives
// an all-zero crop and an all-zero transform; the host validates boxes before they get here.
template <typename Out>
__device__ void cut_body_crops(const unsigned char* image, int height, int width, long long pitch, int bgr,
                               const float* normalisation, const float* person_boxes, double box_scale,
                               int crop_size, Out* out, float* transforms)
{
    int u = blockIdx.x * blockDim.x + threadIdx.x;
    int v = blockIdx.y;
    int k = blockIdx.z;
    if (u >= crop_size) return;
    long long plane = (long long)crop_size * crop_size;
    Out* pixel = out + (long long)k * 3 * plane + (long long)v * crop_size + u;

    BodyRect rect = body_rect(person_boxes + 4 * (long long)k, box_scale);
    if (u == 0 && v == 0) body_crop_transform(rect, crop_size, transforms + 9 * (long long)k);
    if (!rect.valid) {
        for (int c = 0; c < 3; ++c) store(pixel + c * plane, 0.0f);
        return;
    }
    Taps columns = body_crop_taps(u, crop_size, rect.left, rect.width, width);
    Taps rows = body_crop_taps(v, crop_size, rect.top, rect.height, height);
    for (int c = 0; c < 3; ++c) {
        int source_channel = bgr ? 2 - c : c;
        store(pixel + c * plane, body_crop_value(image, pitch, rows, columns, source_channel,
                                                 normalisation[c], normalisation[3 + c]));
    }
}

extern "C" __global__ void part_crops_f32(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                          const float* normalisation, const float* boxes, const int* box_rows,
                                          const unsigned char* mirror, int crop_size, float* out)
{
    cut_part_crops(image, height, width, pitch, bgr, normalisation, boxes, box_rows, mirror, crop_size, out);
}

extern "C" __global__ void part_crops_f16(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                          const float* normalisation, const float* boxes, const int* box_rows,
                                          const unsigned char* mirror, int crop_size, unsigned short* out)
{
    cut_part_crops(image, height, width, pitch, bgr, normalisation, boxes, box_rows, mirror, crop_size, out);
}

extern "C" __global__ void body_crops_f32(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                          const float* normalisation, const float* person_boxes, double box_scale,
                                          int crop_size, float* out, float* transforms)
{
    cut_body_crops(image, height, width, pitch, bgr, normalisation, person_boxes, box_scale, crop_size, out, transforms);
}

extern "C" __global__ void body_crops_f16(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                          const float* normalisation, const float* person_boxes, double box_scale,
                                          int crop_size, unsigned short* out, float* transforms)
{
    cut_body_crops(image, height, width, pitch, bgr, normalisation, person_boxes, box_scale, crop_size, out, transforms);
}
