// crops_host.cpp: the host build of crops.cu. Each entry emulates the kernel's launch on the CPU.
// Built by bodyrt.kernels.build.build_host_library; called through bodyrt.kernels.host (ctypes).
#include "host_shim.h"
#include "crops.cu"

static dim3 crop_grid(int crop_size, int count)
{
    dim3 grid;
    grid.x = (crop_size + CROP_BLOCK_WIDTH - 1) / CROP_BLOCK_WIDTH;
    grid.y = crop_size;
    grid.z = count;
    return grid;
}

static dim3 crop_block()
{
    dim3 block;
    block.x = CROP_BLOCK_WIDTH;
    return block;
}

extern "C" int bodyrt_crop_block_width() { return CROP_BLOCK_WIDTH; }

extern "C" void bodyrt_host_part_crops(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                       const float* normalisation, const float* boxes, const int* box_rows,
                                       const unsigned char* mirror, int count, int crop_size, int half, void* out)
{
    emulate_launch(crop_grid(crop_size, count), crop_block(), [&] {
        if (half)
            part_crops_f16(image, height, width, pitch, bgr, normalisation, boxes, box_rows, mirror, crop_size,
                           (unsigned short*)out);
        else
            part_crops_f32(image, height, width, pitch, bgr, normalisation, boxes, box_rows, mirror, crop_size,
                           (float*)out);
    });
}

extern "C" void bodyrt_host_body_crops(const unsigned char* image, int height, int width, long long pitch, int bgr,
                                       const float* normalisation, const float* person_boxes, double box_scale,
                                       int count, int crop_size, int half, void* out, float* transforms)
{
    emulate_launch(crop_grid(crop_size, count), crop_block(), [&] {
        if (half)
            body_crops_f16(image, height, width, pitch, bgr, normalisation, person_boxes, box_scale, crop_size,
                           (unsigned short*)out, transforms);
        else
            body_crops_f32(image, height, width, pitch, bgr, normalisation, person_boxes, box_scale, crop_size,
                           (float*)out, transforms);
    });
}
