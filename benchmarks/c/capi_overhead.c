/* capi_overhead.c: what a call through libbodyrt costs a C host, for benchmarks/test_capi_overhead.py.
 *
 *   capi_overhead BUNDLE CALL_ROUNDS RUN_ROUNDS
 *
 * Times, with the monotonic clock, the median of CALL_ROUNDS batches of 100 calls for the small
 * calls (bodyrt_version stays in C; in the embedded library the others go through Python), and the median of
 * RUN_ROUNDS runs of a 1280 x 720 image with one person; also the first bodyrt_create (which starts
 * Python in the embedded library) and the first bodyrt_run. Prints one JSON object, microseconds.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bodyrt.h"

enum { BATCH = 100, WIDTH = 1280, HEIGHT = 720 };

#define CHECK(call)                                                                   \
    do {                                                                              \
        if ((call) != BODYRT_OK) {                                                    \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,      \
                    bodyrt_last_error());                                             \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

static double now_us(void)
{
    struct timespec time;
    clock_gettime(CLOCK_MONOTONIC, &time);
    return (double)time.tv_sec * 1e6 + (double)time.tv_nsec / 1e3;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *samples, int count)
{
    qsort(samples, (size_t)count, sizeof *samples, compare_doubles);
    return count % 2 ? samples[count / 2] : 0.5 * (samples[count / 2 - 1] + samples[count / 2]);
}

typedef enum { VERSION, PERSON_COUNT, OUTPUT_DATA, COPY_BETAS, COPY_VERTICES, CALL_KINDS } call_kind;
static const char *CALL_NAMES[CALL_KINDS] = {"version", "person_count", "output_data", "copy_betas",
                                             "copy_vertices"};

/* One call of the given kind on result; the buffer holds the vertices. */
static void call_once(call_kind kind, bodyrt_result result, float *buffer, size_t capacity)
{
    size_t count;
    const float *data;
    switch (kind) {
    case VERSION:
        if (bodyrt_version()[0] == '\0')
            exit(1);
        break;
    case PERSON_COUNT:
        CHECK(bodyrt_person_count(result, &count));
        break;
    case OUTPUT_DATA:
        CHECK(bodyrt_output_data(result, BODYRT_OUTPUT_VERTICES, &data, &count));
        break;
    case COPY_BETAS:
        CHECK(bodyrt_copy_output(result, BODYRT_OUTPUT_BETAS, buffer, capacity, NULL));
        break;
    case COPY_VERTICES:
        CHECK(bodyrt_copy_output(result, BODYRT_OUTPUT_VERTICES, buffer, capacity, NULL));
        break;
    default:
        break;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s BUNDLE CALL_ROUNDS RUN_ROUNDS\n", argv[0]);
        return 2;
    }
    int call_rounds = atoi(argv[2]), run_rounds = atoi(argv[3]);
    if (call_rounds < 1 || run_rounds < 1) {
        fprintf(stderr, "CALL_ROUNDS and RUN_ROUNDS must be >= 1\n");
        return 2;
    }
    bodyrt_options options = bodyrt_default_options();
    bodyrt_pipeline pipeline;
    double start = now_us();
    CHECK(bodyrt_create(argv[1], &options, &pipeline));
    double create_us = now_us() - start;

    /* Noise from a fixed linear congruential sequence, and one person box. */
    uint8_t *pixels = malloc((size_t)WIDTH * HEIGHT * 3);
    uint32_t state = 12345;
    for (size_t i = 0; i < (size_t)WIDTH * HEIGHT * 3; i++) {
        state = state * 1664525u + 1013904223u;
        pixels[i] = (uint8_t)(state >> 24);
    }
    float box[4] = {0.3f * WIDTH, 0.05f * HEIGHT, 0.6f * WIDTH, 0.95f * HEIGHT};

    bodyrt_result result;
    start = now_us();
    CHECK(bodyrt_run(pipeline, pixels, WIDTH, HEIGHT, 3 * WIDTH, BODYRT_RGB, box, 1, &result));
    double first_run_us = now_us() - start;
    double *samples = malloc(sizeof(double) * (size_t)(call_rounds > run_rounds ? call_rounds : run_rounds));
    size_t capacity = 10475 * 3;
    float *buffer = malloc(capacity * sizeof(float));

    printf("{\"create_us\": %.1f, \"first_run_us\": %.1f", create_us, first_run_us);
    for (int kind = 0; kind < CALL_KINDS; kind++) {
        for (int round = 0; round < call_rounds; round++) {
            start = now_us();
            for (int call = 0; call < BATCH; call++)
                call_once((call_kind)kind, result, buffer, capacity);
            samples[round] = (now_us() - start) / BATCH;
        }
        printf(", \"%s_us\": %.3f", CALL_NAMES[kind], median(samples, call_rounds));
    }
    CHECK(bodyrt_release(result));

    for (int round = 0; round < run_rounds; round++) {
        start = now_us();
        CHECK(bodyrt_run(pipeline, pixels, WIDTH, HEIGHT, 3 * WIDTH, BODYRT_RGB, box, 1, &result));
        samples[round] = now_us() - start;
        CHECK(bodyrt_release(result));
    }
    printf(", \"run_us\": %.1f}\n", median(samples, run_rounds));

    CHECK(bodyrt_destroy(pipeline));
    free(buffer);
    free(samples);
    free(pixels);
    return 0;
}
