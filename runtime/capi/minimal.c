/* minimal.c: one image through a bodyrt bundle, from C.
 *
 *     bodyrt build-capi --out capi
 *     gcc minimal.c -Icapi -Lcapi -lbodyrt -Wl,-rpath,$PWD/capi -o minimal
 *     ./minimal path/to/bundle
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bodyrt.h"

static int fail(const char *call)
{
    fprintf(stderr, "%s failed: %s\n", call, bodyrt_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s BUNDLE_DIR\n", argv[0]);
        return 2;
    }
    bodyrt_options options = bodyrt_default_options();  /* default backend, 2 threads, fp32 */
    bodyrt_pipeline pipeline;
    if (bodyrt_create(argv[1], &options, &pipeline) != BODYRT_OK)
        return fail("bodyrt_create");

    /* A grey 640 x 480 RGB image, rows packed (stride 3 * width), and one person box. */
    int width = 640, height = 480;
    uint8_t *pixels = malloc((size_t)width * height * 3);
    memset(pixels, 128, (size_t)width * height * 3);
    float box[4] = {220.0f, 40.0f, 420.0f, 440.0f};  /* x0, y0, x1, y1 */

    bodyrt_result result;
    bodyrt_status status = bodyrt_run(pipeline, pixels, width, height, 3 * width, BODYRT_RGB,
                                      box, 1, &result);
    free(pixels);  /* the library keeps no pointer to its inputs */
    if (status != BODYRT_OK)
        return fail("bodyrt_run");

    /* Read the vertices in place (valid until bodyrt_release); copy the betas. */
    const float *vertices;
    size_t vertex_floats;
    float betas[10];
    if (bodyrt_output_data(result, BODYRT_OUTPUT_VERTICES, &vertices, &vertex_floats) != BODYRT_OK)
        return fail("bodyrt_output_data");
    if (bodyrt_copy_output(result, BODYRT_OUTPUT_BETAS, betas, 10, NULL) != BODYRT_OK)
        return fail("bodyrt_copy_output");
    printf("bodyrt %s: %zu vertices, the first at (%.4f, %.4f, %.4f) m; betas[0] = %.4f\n",
           bodyrt_version(), vertex_floats / 3, vertices[0], vertices[1], vertices[2], betas[0]);

    bodyrt_release(result);
    bodyrt_destroy(pipeline);
    return 0;
}
