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

static int fail(void)
{
    fprintf(stderr, "%s\n", bodyrt_last_error());  /* names the function and the argument at fault */
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s BUNDLE_DIR\n", argv[0]);
        return 2;
    }
    bodyrt_options options = bodyrt_default_options();
    options.threads = 2;
    bodyrt_pipeline pipeline;
    if (bodyrt_create(argv[1], &options, &pipeline) != BODYRT_OK)
        return fail();

    /* A grey 640 x 480 RGB image, rows packed (stride 3 * width), and one person box. */
    int width = 640, height = 480;
    uint8_t *pixels = malloc((size_t)width * height * 3);
    memset(pixels, 128, (size_t)width * height * 3);
    float box[4] = {220.0f, 40.0f, 420.0f, 440.0f};  /* x0, y0, x1, y1 */

    bodyrt_result result;
    if (bodyrt_run(pipeline, pixels, width, height, 3 * width, BODYRT_RGB, box, 1, &result) != BODYRT_OK)
        return fail();
    free(pixels);

    /* Read the vertices in place (valid until bodyrt_release), copy the betas. */
    const float *vertices;
    size_t vertex_floats;
    if (bodyrt_output_data(result, BODYRT_OUTPUT_VERTICES, &vertices, &vertex_floats) != BODYRT_OK)
        return fail();
    float betas[10];
    if (bodyrt_copy_output(result, BODYRT_OUTPUT_BETAS, betas, 10, NULL) != BODYRT_OK)
        return fail();
    printf("bodyrt %s: %zu vertices, the first at (%.4f, %.4f, %.4f) m; betas[0] = %.4f\n",
           bodyrt_version(), vertex_floats / 3, vertices[0], vertices[1], vertices[2], betas[0]);

    bodyrt_release(result);
    bodyrt_destroy(pipeline);
    return 0;
}
