// crops_host.cpp: the host build of crops.cu, for tests on machines without a GPU.
//
// bodyrt_host_launch takes what cuLaunchKernel takes (kernel name, grid, block, and kernelParams: one
// pointer per argument, pointing at its value) and runs the kernel's own code once per emulated
// thread, so the Python launch description (bodyrt.kernels.launch) is exercised exactly as on a GPU.
// Built by bodyrt.kernels.build.build_host_library; called through bodyrt.kernels.host (ctypes).
#include <cstring>

#include "host_shim.h"
#include "crops.cu"

template <typename T>
static T argument(void** parameters, int index)
{
    return *static_cast<T*>(parameters[index]);
}

template <typename Out, typename Kernel>
static void launch_part_crops(Kernel kernel, dim3 grid, dim3 block, void** p)
{
    emulate_launch(grid, block, [&] {
        kernel(argument<const unsigned char*>(p, 0), argument<int>(p, 1), argument<int>(p, 2),
               argument<long long>(p, 3), argument<int>(p, 4), argument<float>(p, 5), argument<float>(p, 6),
               argument<float>(p, 7), argument<float>(p, 8), argument<float>(p, 9), argument<float>(p, 10),
               argument<float>(p, 11), argument<const float*>(p, 12), argument<int>(p, 13), argument<int>(p, 14),
               argument<int>(p, 15), argument<unsigned int>(p, 16), argument<int>(p, 17), argument<Out*>(p, 18));
    });
}

template <typename Out, typename Kernel>
static void launch_body_crops(Kernel kernel, dim3 grid, dim3 block, void** p)
{
    emulate_launch(grid, block, [&] {
        kernel(argument<const unsigned char*>(p, 0), argument<int>(p, 1), argument<int>(p, 2),
               argument<long long>(p, 3), argument<int>(p, 4), argument<float>(p, 5), argument<float>(p, 6),
               argument<float>(p, 7), argument<float>(p, 8), argument<float>(p, 9), argument<float>(p, 10),
               argument<float>(p, 11), argument<const float*>(p, 12), argument<double>(p, 13), argument<int>(p, 14),
               argument<Out*>(p, 15), argument<float*>(p, 16));
    });
}

// Returns 0, or -1 for an unknown kernel name.
extern "C" int bodyrt_host_launch(const char* kernel, const unsigned* grid, const unsigned* block, void** parameters)
{
    dim3 grid_size{grid[0], grid[1], grid[2]};
    dim3 block_size{block[0], block[1], block[2]};
    if (std::strcmp(kernel, "part_crops_f32") == 0)
        launch_part_crops<float>(part_crops_f32, grid_size, block_size, parameters);
    else if (std::strcmp(kernel, "part_crops_f16") == 0)
        launch_part_crops<unsigned short>(part_crops_f16, grid_size, block_size, parameters);
    else if (std::strcmp(kernel, "body_crops_f32") == 0)
        launch_body_crops<float>(body_crops_f32, grid_size, block_size, parameters);
    else if (std::strcmp(kernel, "body_crops_f16") == 0)
        launch_body_crops<unsigned short>(body_crops_f16, grid_size, block_size, parameters);
    else
        return -1;
    return 0;
}
