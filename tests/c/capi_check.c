/* capi_check.c: drives libbodyrt for tests/test_capi.py.
 *
 *   capi_check outputs BUNDLE IMAGE.rgb WIDTH HEIGHT BOXES.f32 PERSONS OUT_DIR [PRECISION]
 *       run the image (RGB, rows padded) and its BGR copy; write every output, the shapes and faces
 *   capi_check errors BUNDLE BAD_BUNDLE IMAGE.rgb WIDTH HEIGHT
 *       one line per bad call: case <TAB> status name <TAB> count <TAB> message
 *   capi_check threads BUNDLE IMAGE.rgb WIDTH HEIGHT
 *       threads sharing a pipeline, a pipeline per thread, thread-local errors, destroy during runs
 *   capi_check hardening BUNDLE TAMPERED_BUNDLE OTHER_VERSION_BUNDLE IMAGE.rgb WIDTH HEIGHT
 *       more bad input (as `errors` prints it): modified bundles, absurd sizes and boxes, bad
 *       precisions; then threads creating, running and destroying pipelines at once
 *
 * Exits 0 when every check made in C passed; the test checks the rest.
 */
#define _POSIX_C_SOURCE 200809L /* pthread barriers, nanosleep under -std=c11 */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bodyrt.h"

#define CHECK(condition)                                                                \
    do {                                                                                \
        if (!(condition)) {                                                             \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__,     \
                    __LINE__, #condition, bodyrt_last_error());                          \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

static const struct {
    bodyrt_output output;
    const char *name;
} OUTPUTS[] = {
    {BODYRT_OUTPUT_VERTICES, "vertices"},
    {BODYRT_OUTPUT_JOINTS, "joints"},
    {BODYRT_OUTPUT_GLOBAL_ORIENT, "global_orient"},
    {BODYRT_OUTPUT_BODY_POSE, "body_pose"},
    {BODYRT_OUTPUT_LEFT_HAND_POSE, "left_hand_pose"},
    {BODYRT_OUTPUT_RIGHT_HAND_POSE, "right_hand_pose"},
    {BODYRT_OUTPUT_JAW_POSE, "jaw_pose"},
    {BODYRT_OUTPUT_BETAS, "betas"},
    {BODYRT_OUTPUT_EXPRESSION, "expression"},
    {BODYRT_OUTPUT_CAMERA_SCALE, "camera_scale"},
    {BODYRT_OUTPUT_CAMERA_TRANSLATION, "camera_translation"},
    {BODYRT_OUTPUT_PINHOLE_TRANSLATION, "pinhole_translation"},
    {BODYRT_OUTPUT_FOCAL_LENGTH, "focal_length"},
    {BODYRT_OUTPUT_PART_BOXES, "part_boxes"},
    {BODYRT_OUTPUT_CROP_TRANSFORMS, "crop_transforms"},
};
#define OUTPUT_COUNT (sizeof OUTPUTS / sizeof OUTPUTS[0])

static void *read_file(const char *path, size_t *size)
{
    FILE *file = fopen(path, "rb");
    CHECK(file != NULL);
    fseek(file, 0, SEEK_END);
    *size = (size_t)ftell(file);
    fseek(file, 0, SEEK_SET);
    void *data = malloc(*size);
    CHECK(fread(data, 1, *size, file) == *size);
    fclose(file);
    return data;
}

static void write_file(const char *dir, const char *prefix, const char *name, const void *data,
                       size_t size)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s%s", dir, prefix, name);
    FILE *file = fopen(path, "wb");
    CHECK(file != NULL);
    CHECK(fwrite(data, 1, size, file) == size);
    fclose(file);
}

/* Every output through bodyrt_copy_output, checked against bodyrt_output_data, into dir/prefix*. */
static void write_outputs(bodyrt_result result, const char *dir, const char *prefix, FILE *shapes)
{
    for (size_t i = 0; i < OUTPUT_COUNT; i++) {
        size_t shape[BODYRT_MAX_DIMS], ndim, count, copied;
        const float *data;
        CHECK(bodyrt_output_shape(result, OUTPUTS[i].output, shape, &ndim) == BODYRT_OK);
        CHECK(bodyrt_output_data(result, OUTPUTS[i].output, &data, &count) == BODYRT_OK);
        float *buffer = malloc(count * sizeof(float));
        CHECK(bodyrt_copy_output(result, OUTPUTS[i].output, buffer, count, &copied) == BODYRT_OK);
        CHECK(copied == count && memcmp(buffer, data, count * sizeof(float)) == 0);
        char name[256];
        snprintf(name, sizeof name, "%s.f32", OUTPUTS[i].name);
        write_file(dir, prefix, name, buffer, count * sizeof(float));
        free(buffer);
        if (shapes != NULL) {
            fprintf(shapes, "%s", OUTPUTS[i].name);
            for (size_t axis = 0; axis < ndim; axis++)
                fprintf(shapes, " %zu", shape[axis]);
            fprintf(shapes, "\n");
        }
    }
}

static int check_outputs(char **argv, const char *precision)
{
    const char *bundle = argv[2], *out_dir = argv[8];
    int width = atoi(argv[4]), height = atoi(argv[5]), persons = atoi(argv[7]);
    size_t image_size, boxes_size;
    uint8_t *image = read_file(argv[3], &image_size);
    float *boxes = read_file(argv[6], &boxes_size);
    CHECK(image_size == (size_t)width * height * 3 && boxes_size == (size_t)persons * 4 * sizeof(float));

    bodyrt_pipeline pipeline;
    bodyrt_options options = bodyrt_default_options();
    if (precision != NULL)
        options.precision = precision;
    CHECK(bodyrt_create(bundle, &options, &pipeline) == BODYRT_OK);

    /* RGB with each row padded by 7 bytes. */
    int64_t padded_stride = 3 * (int64_t)width + 7;
    uint8_t *padded = calloc((size_t)(padded_stride * height), 1);
    for (int row = 0; row < height; row++)
        memcpy(padded + row * padded_stride, image + (size_t)row * width * 3, (size_t)width * 3);
    bodyrt_result result;
    CHECK(bodyrt_run(pipeline, padded, width, height, padded_stride, BODYRT_RGB, boxes, persons,
                     &result) == BODYRT_OK);
    size_t person_count;
    CHECK(bodyrt_person_count(result, &person_count) == BODYRT_OK && person_count == (size_t)persons);
    char shapes_path[4096];
    snprintf(shapes_path, sizeof shapes_path, "%s/shapes.txt", out_dir);
    FILE *shapes = fopen(shapes_path, "w");
    CHECK(shapes != NULL);
    write_outputs(result, out_dir, "rgb_", shapes);
    fclose(shapes);
    CHECK(bodyrt_release(result) == BODYRT_OK);

    /* The same pixels as BGR, rows packed. */
    uint8_t *bgr = malloc(image_size);
    for (size_t pixel = 0; pixel < image_size; pixel += 3) {
        bgr[pixel] = image[pixel + 2];
        bgr[pixel + 1] = image[pixel + 1];
        bgr[pixel + 2] = image[pixel];
    }
    CHECK(bodyrt_run(pipeline, bgr, width, height, 3 * (int64_t)width, BODYRT_BGR, boxes, persons,
                     &result) == BODYRT_OK);
    write_outputs(result, out_dir, "bgr_", NULL);
    CHECK(bodyrt_release(result) == BODYRT_OK);

    const int32_t *faces;
    size_t face_count, copied;
    CHECK(bodyrt_faces(pipeline, &faces, &face_count) == BODYRT_OK);
    int32_t *faces_copy = malloc(face_count * 3 * sizeof(int32_t));
    CHECK(bodyrt_copy_faces(pipeline, faces_copy, face_count * 3, &copied) == BODYRT_OK);
    CHECK(copied == face_count * 3 && memcmp(faces, faces_copy, copied * sizeof(int32_t)) == 0);
    write_file(out_dir, "", "faces.i32", faces_copy, copied * sizeof(int32_t));

    CHECK(bodyrt_destroy(pipeline) == BODYRT_OK);
    free(faces_copy);
    free(bgr);
    free(padded);
    free(boxes);
    free(image);
    return 0;
}

static void print_case(const char *name, bodyrt_status status, size_t count)
{
    printf("%s\t%s\t%zu\t%s\n", name, bodyrt_status_name(status),
           count, status == BODYRT_OK ? "" : bodyrt_last_error());
}

/* One line per call: its status, `count` as the call left it (zeroed before) and its message. */
#define REPORT(name, call)                            \
    do {                                              \
        count = 0;                                    \
        bodyrt_status reported_status = (call);       \
        print_case(name, reported_status, count);     \
    } while (0)

static int check_errors(char **argv)
{
    const char *bundle = argv[2], *bad_bundle = argv[3];
    int width = atoi(argv[5]), height = atoi(argv[6]);
    size_t image_size;
    uint8_t *image = read_file(argv[4], &image_size);
    float box[4] = {0.25f * width, 0.1f * height, 0.75f * width, 0.9f * height};
    bodyrt_pipeline pipeline, stale_pipeline;
    bodyrt_result result, stale_result;
    bodyrt_options options = bodyrt_default_options();
    float floats[16];
    int32_t ints[16];
    const float *data;
    const int32_t *faces;
    size_t count = 0, shape[BODYRT_MAX_DIMS], ndim;
    char message[256];

    printf("version\t%s\t0\t%s\n", bodyrt_status_name(BODYRT_OK), bodyrt_version());
    printf("status_name_99\t%s\t0\t\n", bodyrt_status_name((bodyrt_status)99));
    REPORT("create_null_bundle_dir", bodyrt_create(NULL, NULL, &pipeline));
    REPORT("create_missing_bundle", bodyrt_create("/nonexistent/bundle", NULL, &pipeline));
    REPORT("create_bad_bundle", bodyrt_create(bad_bundle, NULL, &pipeline));
    CHECK(pipeline.id == 0);
    REPORT("create_null_pipeline", bodyrt_create(bundle, NULL, NULL));
    options.threads = 0;
    REPORT("create_zero_threads", bodyrt_create(bundle, &options, &pipeline));
    options.threads = -3;
    REPORT("create_negative_threads", bodyrt_create(bundle, &options, &pipeline));
    options.threads = 100000;  /* once grew a process to 7.7 GB: bounded by the CPU count now */
    REPORT("create_too_many_threads", bodyrt_create(bundle, &options, &pipeline));
    options = bodyrt_default_options();
    options.backend = NULL;
    REPORT("create_null_backend", bodyrt_create(bundle, &options, &pipeline));
    options.backend = "no-such-backend";
    REPORT("create_unknown_backend", bodyrt_create(bundle, &options, &pipeline));

    options = bodyrt_default_options();
    CHECK(bodyrt_create(bundle, &options, &pipeline) == BODYRT_OK && pipeline.id != 0);
    int64_t stride = 3 * (int64_t)width;
    REPORT("run_null_pixels", bodyrt_run(pipeline, NULL, width, height, stride, BODYRT_RGB, box, 1, &result));
    CHECK(result.id == 0);
    REPORT("run_zero_width", bodyrt_run(pipeline, image, 0, height, stride, BODYRT_RGB, box, 1, &result));
    REPORT("run_negative_height", bodyrt_run(pipeline, image, width, -5, stride, BODYRT_RGB, box, 1, &result));
    REPORT("run_short_stride", bodyrt_run(pipeline, image, width, height, stride - 1, BODYRT_RGB, box, 1, &result));
    REPORT("run_negative_stride", bodyrt_run(pipeline, image, width, height, -stride, BODYRT_RGB, box, 1, &result));
    /* INT_MAX rows of a 700-million-pixel-wide image: refused from the numbers, never read */
    REPORT("run_huge_image", bodyrt_run(pipeline, image, INT_MAX / 3, INT_MAX, INT_MAX, BODYRT_RGB, box, 1, &result));
    REPORT("run_bad_channel_order", bodyrt_run(pipeline, image, width, height, stride, (bodyrt_channel_order)7, box, 1, &result));
    REPORT("run_null_boxes", bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, NULL, 1, &result));
    REPORT("run_zero_persons", bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, box, 0, &result));
    REPORT("run_negative_persons", bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, box, -2, &result));
    REPORT("run_null_result", bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, box, 1, NULL));
    float inverted_box[4] = {box[2], box[3], box[0], box[1]};
    REPORT("run_inverted_box", bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, inverted_box, 1, &result));

    REPORT("pipeline_last_error", bodyrt_pipeline_last_error(pipeline, message, sizeof message));
    printf("pipeline_last_error_message\tBODYRT_OK\t0\t%s\n", message);
    REPORT("pipeline_last_error_truncated", bodyrt_pipeline_last_error(pipeline, message, 8));
    printf("pipeline_last_error_truncated_message\tBODYRT_OK\t0\t%s\n", message);
    REPORT("pipeline_last_error_null_message", bodyrt_pipeline_last_error(pipeline, NULL, 8));
    REPORT("pipeline_last_error_zero_capacity", bodyrt_pipeline_last_error(pipeline, message, 0));

    CHECK(bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, box, 1, &result) == BODYRT_OK);
    REPORT("copy_too_small", bodyrt_copy_output(result, BODYRT_OUTPUT_VERTICES, floats, 16, &count));
    REPORT("copy_betas_too_small", bodyrt_copy_output(result, BODYRT_OUTPUT_BETAS, floats, 9, NULL));
    REPORT("copy_betas", bodyrt_copy_output(result, BODYRT_OUTPUT_BETAS, floats, 16, &count));
    REPORT("copy_null_buffer", bodyrt_copy_output(result, BODYRT_OUTPUT_BETAS, NULL, 16, &count));
    REPORT("copy_bad_output", bodyrt_copy_output(result, (bodyrt_output)99, floats, 16, &count));
    REPORT("result_last_error", bodyrt_pipeline_last_error(pipeline, message, sizeof message));
    printf("result_last_error_message\tBODYRT_OK\t0\t%s\n", message);
    REPORT("data_null_data", bodyrt_output_data(result, BODYRT_OUTPUT_JOINTS, NULL, &count));
    REPORT("data_null_count", bodyrt_output_data(result, BODYRT_OUTPUT_JOINTS, &data, NULL));
    REPORT("shape_null_shape", bodyrt_output_shape(result, BODYRT_OUTPUT_BODY_POSE, NULL, &ndim));
    REPORT("shape_null_ndim", bodyrt_output_shape(result, BODYRT_OUTPUT_BODY_POSE, shape, NULL));
    REPORT("person_count_null", bodyrt_person_count(result, NULL));
    REPORT("faces_too_small", bodyrt_copy_faces(pipeline, ints, 16, &count));
    REPORT("faces_null_pointer", bodyrt_faces(pipeline, NULL, &count));
    REPORT("faces_null_count", bodyrt_faces(pipeline, &faces, NULL));

    stale_result = result;
    REPORT("release", bodyrt_release(result));
    REPORT("release_again", bodyrt_release(stale_result));
    REPORT("copy_after_release", bodyrt_copy_output(stale_result, BODYRT_OUTPUT_BETAS, floats, 16, &count));
    REPORT("data_after_release", bodyrt_output_data(stale_result, BODYRT_OUTPUT_BETAS, &data, &count));
    REPORT("person_count_after_release", bodyrt_person_count(stale_result, &count));
    bodyrt_result never_made = {123456789};
    REPORT("never_made_result", bodyrt_person_count(never_made, &count));
    bodyrt_result no_result = {0};
    REPORT("release_zero_result", bodyrt_release(no_result));

    stale_pipeline = pipeline;
    REPORT("destroy", bodyrt_destroy(pipeline));
    REPORT("destroy_again", bodyrt_destroy(stale_pipeline));
    REPORT("run_after_destroy", bodyrt_run(stale_pipeline, image, width, height, stride, BODYRT_RGB, box, 1, &result));
    REPORT("faces_after_destroy", bodyrt_faces(stale_pipeline, &faces, &count));
    REPORT("last_error_after_destroy", bodyrt_pipeline_last_error(stale_pipeline, message, sizeof message));
    bodyrt_pipeline no_pipeline = {0};
    REPORT("destroy_zero_pipeline", bodyrt_destroy(no_pipeline));
    free(image);
    return 0;
}

/* ---- threads ---- */

enum { SHARING_THREADS = 3, OWNING_THREADS = 2, RUNS_PER_THREAD = 2 };

typedef struct {
    bodyrt_pipeline pipeline;  /* {0}: the thread opens its own */
    const char *bundle;
    int index;
    const uint8_t *image;
    int width, height;
    const float *box;
    const float *reference;    /* vertices of the main thread's run */
    size_t reference_count;
    pthread_barrier_t *barrier;
    int failures;
} worker_args;

static int run_matches_reference(worker_args *args, bodyrt_pipeline pipeline)
{
    bodyrt_result result;
    const float *vertices;
    size_t count;
    if (bodyrt_run(pipeline, args->image, args->width, args->height, 3 * (int64_t)args->width,
                   BODYRT_RGB, args->box, 1, &result) != BODYRT_OK) {
        fprintf(stderr, "thread %d: %s\n", args->index, bodyrt_last_error());
        return 0;
    }
    int matches = bodyrt_output_data(result, BODYRT_OUTPUT_VERTICES, &vertices, &count) == BODYRT_OK
                  && count == args->reference_count;
    for (size_t i = 0; matches && i < count; i++)
        matches = vertices[i] - args->reference[i] <= 1e-6f && args->reference[i] - vertices[i] <= 1e-6f;
    bodyrt_release(result);
    return matches;
}

static void *worker(void *argument)
{
    worker_args *args = argument;
    bodyrt_pipeline pipeline = args->pipeline;
    if (pipeline.id == 0) {
        bodyrt_options options = bodyrt_default_options();
        options.threads = 1;
        if (bodyrt_create(args->bundle, &options, &pipeline) != BODYRT_OK) {
            args->failures++;
            return NULL;
        }
    }
    for (int run = 0; run < RUNS_PER_THREAD; run++)
        args->failures += !run_matches_reference(args, pipeline);

    /* Thread-local errors: every thread fails with its own width, then reads its own message. */
    char expected[128];
    snprintf(expected, sizeof expected, "width must be > 0, got %d", -(args->index + 1));
    bodyrt_result result;
    bodyrt_run(pipeline, args->image, -(args->index + 1), args->height, 3 * (int64_t)args->width,
               BODYRT_RGB, args->box, 1, &result);
    pthread_barrier_wait(args->barrier);
    if (strstr(bodyrt_last_error(), expected) == NULL) {
        fprintf(stderr, "thread %d: last error %s, expected %s\n", args->index, bodyrt_last_error(),
                expected);
        args->failures++;
    }
    if (args->pipeline.id == 0)
        args->failures += bodyrt_destroy(pipeline) != BODYRT_OK;
    return NULL;
}

static void run_workers(worker_args *template, int count, int own_pipelines)
{
    pthread_t threads[8];
    worker_args args[8];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)count);
    for (int i = 0; i < count; i++) {
        args[i] = *template;
        args[i].index = i;
        args[i].barrier = &barrier;
        if (own_pipelines)
            args[i].pipeline.id = 0;
        CHECK(pthread_create(&threads[i], NULL, worker, &args[i]) == 0);
    }
    for (int i = 0; i < count; i++) {
        pthread_join(threads[i], NULL);
        CHECK(args[i].failures == 0);
    }
    pthread_barrier_destroy(&barrier);
}

typedef struct {
    bodyrt_pipeline pipeline;
    worker_args *template;
    atomic_int ok_runs;  /* read by the main thread while the racer runs */
    int invalid_handle_runs, other_statuses;
} racer_args;

/* Runs until the pipeline is destroyed under it: every status must be OK or INVALID_HANDLE. */
static void *racer(void *argument)
{
    racer_args *args = argument;
    for (;;) {
        bodyrt_result result;
        bodyrt_status status = bodyrt_run(args->pipeline, args->template->image, args->template->width,
                                          args->template->height, 3 * (int64_t)args->template->width,
                                          BODYRT_RGB, args->template->box, 1, &result);
        if (status == BODYRT_OK) {
            atomic_fetch_add(&args->ok_runs, 1);
            bodyrt_release(result);
        } else if (status == BODYRT_ERROR_INVALID_HANDLE) {
            args->invalid_handle_runs++;
            return NULL;
        } else {
            fprintf(stderr, "racer: %s: %s\n", bodyrt_status_name(status), bodyrt_last_error());
            args->other_statuses++;
            return NULL;
        }
    }
}

static int check_threads(char **argv)
{
    int width = atoi(argv[4]), height = atoi(argv[5]);
    size_t image_size;
    uint8_t *image = read_file(argv[3], &image_size);
    float box[4] = {0.25f * width, 0.1f * height, 0.75f * width, 0.9f * height};
    bodyrt_options options = bodyrt_default_options();
    options.threads = 1;
    bodyrt_pipeline shared;
    CHECK(bodyrt_create(argv[2], &options, &shared) == BODYRT_OK);
    bodyrt_result result;
    CHECK(bodyrt_run(shared, image, width, height, 3 * (int64_t)width, BODYRT_RGB, box, 1, &result) == BODYRT_OK);
    const float *reference;
    size_t reference_count;
    CHECK(bodyrt_output_data(result, BODYRT_OUTPUT_VERTICES, &reference, &reference_count) == BODYRT_OK);

    worker_args template = {shared, argv[2], 0, image, width, height, box, reference, reference_count, NULL, 0};
    run_workers(&template, SHARING_THREADS, 0);
    printf("shared pipeline: %d threads x %d runs match\n", SHARING_THREADS, RUNS_PER_THREAD);
    run_workers(&template, OWNING_THREADS, 1);
    printf("pipeline per thread: %d threads x %d runs match\n", OWNING_THREADS, RUNS_PER_THREAD);

    racer_args racers[2] = {{shared, &template, 0, 0, 0}, {shared, &template, 0, 0, 0}};
    struct timespec pause = {0, 1000000};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&threads[i], NULL, racer, &racers[i]) == 0);
    while (atomic_load(&racers[0].ok_runs) + atomic_load(&racers[1].ok_runs) == 0)
        nanosleep(&pause, NULL);  /* until a run finished, so the destroy lands mid-stream */
    CHECK(bodyrt_destroy(shared) == BODYRT_OK);
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
        CHECK(racers[i].invalid_handle_runs == 1 && racers[i].other_statuses == 0);
    }
    printf("destroy during runs: %d runs finished, then BODYRT_ERROR_INVALID_HANDLE\n",
           atomic_load(&racers[0].ok_runs) + atomic_load(&racers[1].ok_runs));

    CHECK(bodyrt_release(result) == BODYRT_OK);  /* a result outlives its pipeline */
    free(image);
    return 0;
}

/* ---- hardening ---- */

enum { CHURN_THREADS = 3, CHURN_ROUNDS = 2 };

typedef struct {
    const char *bundle;
    const uint8_t *image;
    int width, height;
    const float *box;
    int failures;
} churn_args;

/* Create, run, destroy, destroy again: CHURN_ROUNDS times, while the other threads do the same. */
static void *churn(void *argument)
{
    churn_args *args = argument;
    for (int round = 0; round < CHURN_ROUNDS; round++) {
        bodyrt_options options = bodyrt_default_options();
        options.threads = 1;
        bodyrt_pipeline pipeline;
        bodyrt_result result;
        if (bodyrt_create(args->bundle, &options, &pipeline) != BODYRT_OK) {
            fprintf(stderr, "churn create: %s\n", bodyrt_last_error());
            args->failures++;
            continue;
        }
        if (bodyrt_run(pipeline, args->image, args->width, args->height, 3 * (int64_t)args->width, BODYRT_RGB,
                       args->box, 1, &result) != BODYRT_OK) {
            fprintf(stderr, "churn run: %s\n", bodyrt_last_error());
            args->failures++;
        }
        args->failures += bodyrt_destroy(pipeline) != BODYRT_OK;
        args->failures += bodyrt_destroy(pipeline) != BODYRT_ERROR_INVALID_HANDLE;
        args->failures += bodyrt_release(result) != BODYRT_OK;  /* results outlive their pipeline */
        args->failures += bodyrt_release(result) != BODYRT_ERROR_INVALID_HANDLE;
    }
    return NULL;
}

static int check_hardening(char **argv)
{
    const char *bundle = argv[2];
    int width = atoi(argv[6]), height = atoi(argv[7]);
    size_t image_size;
    uint8_t *image = read_file(argv[5], &image_size);
    float box[4] = {0.25f * width, 0.1f * height, 0.75f * width, 0.9f * height};
    bodyrt_pipeline pipeline;
    bodyrt_result result;
    bodyrt_options options = bodyrt_default_options();
    size_t count = 0;
    int64_t stride = 3 * (int64_t)width;

    REPORT("create_tampered_bundle", bodyrt_create(argv[3], NULL, &pipeline));
    CHECK(pipeline.id == 0);
    REPORT("create_other_version", bodyrt_create(argv[4], NULL, &pipeline));
    options.precision = NULL;
    REPORT("create_null_precision", bodyrt_create(bundle, &options, &pipeline));
    options.precision = "fp64";
    REPORT("create_unknown_precision", bodyrt_create(bundle, &options, &pipeline));
    options = bodyrt_default_options();
    options.threads = 1;
    CHECK(bodyrt_create(bundle, &options, &pipeline) == BODYRT_OK);

    REPORT("run_int_max_image", bodyrt_run(pipeline, image, INT_MAX, INT_MAX, 3 * (int64_t)INT_MAX, BODYRT_RGB, box, 1,
                                           &result));
    CHECK(result.id == 0);
    REPORT("run_int_max_height", bodyrt_run(pipeline, image, width, INT_MAX, INT64_MAX / 2, BODYRT_RGB, box, 1,
                                            &result));
    REPORT("run_int_max_stride", bodyrt_run(pipeline, image, width, height, INT64_MAX, BODYRT_RGB, box, 1, &result));
    float nan_box[4] = {box[0], NAN, box[2], box[3]};
    REPORT("run_nan_box", bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, nan_box, 1, &result));
    float outside_box[4] = {(float)width + 10, 0, (float)width + 50, 40};
    REPORT("run_outside_box", bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, outside_box, 1, &result));
    float huge_box[4] = {0, 0, 1e12f, 1e12f};
    REPORT("run_huge_box", bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, huge_box, 1, &result));
    float second_bad[8] = {box[0], box[1], box[2], box[3], 5, 5, 5, 5};
    REPORT("run_second_box_empty", bodyrt_run(pipeline, image, width, height, stride, BODYRT_RGB, second_bad, 2, &result));
    /* A 1 x 1 image and a box around it: valid, mostly zero padding. */
    REPORT("run_one_pixel_image", bodyrt_run(pipeline, image, 1, 1, 3, BODYRT_RGB, (float[4]){0, 0, 1, 1}, 1, &result));
    CHECK(bodyrt_person_count(result, &count) == BODYRT_OK && count == 1);
    CHECK(bodyrt_release(result) == BODYRT_OK);
    CHECK(bodyrt_destroy(pipeline) == BODYRT_OK);
    REPORT("destroy_twice", bodyrt_destroy(pipeline));

    pthread_t threads[CHURN_THREADS];
    churn_args args[CHURN_THREADS];
    for (int i = 0; i < CHURN_THREADS; i++) {
        args[i] = (churn_args){bundle, image, width, height, box, 0};
        CHECK(pthread_create(&threads[i], NULL, churn, &args[i]) == 0);
    }
    int failures = 0;
    for (int i = 0; i < CHURN_THREADS; i++) {
        pthread_join(threads[i], NULL);
        failures += args[i].failures;
    }
    printf("churn\t%s\t%d\t%d threads x %d create/run/destroy rounds\n", failures ? "FAILED" : "BODYRT_OK", failures,
           CHURN_THREADS, CHURN_ROUNDS);
    free(image);
    return 0;
}

int main(int argc, char **argv)
{
    if ((argc == 9 || argc == 10) && strcmp(argv[1], "outputs") == 0)
        return check_outputs(argv, argc == 10 ? argv[9] : NULL);
    if (argc == 7 && strcmp(argv[1], "errors") == 0)
        return check_errors(argv);
    if (argc == 6 && strcmp(argv[1], "threads") == 0)
        return check_threads(argv);
    if (argc == 8 && strcmp(argv[1], "hardening") == 0)
        return check_hardening(argv);
    fprintf(stderr, "usage: see the comment at the top of capi_check.c\n");
    return 2;
}
