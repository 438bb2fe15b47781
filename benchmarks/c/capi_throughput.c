/* capi_throughput.c: images per second through libbodyrt, one pipeline against one per thread.
 *
 *   capi_throughput BUNDLE RUNS
 *
 * shared:     1 pipeline with 2 intra-op threads, RUNS runs one after another on one host thread.
 * per_thread: 2 pipelines with 1 intra-op thread each, on 2 host threads, RUNS / 2 runs each, at
 *             the same time (with the native library they share nothing; with the embedded one
 *             they share the interpreter).
 * Both on the same 1280 x 720 noise image with one person box, after one warm-up run per pipeline.
 * Prints one JSON object: runs per second of each, and the wall time of each.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "bodyrt.h"

enum { WIDTH = 1280, HEIGHT = 720, HOST_THREADS = 2 };

#define CHECK(call)                                                                   \
    do {                                                                              \
        if ((call) != BODYRT_OK) {                                                    \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,      \
                    bodyrt_last_error());                                             \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

static uint8_t *pixels;
static const float BOX[4] = {0.3f * WIDTH, 0.05f * HEIGHT, 0.6f * WIDTH, 0.95f * HEIGHT};

static double now_s(void)
{
    struct timespec time;
    clock_gettime(CLOCK_MONOTONIC, &time);
    return (double)time.tv_sec + (double)time.tv_nsec / 1e9;
}

static void run_once(bodyrt_pipeline pipeline)
{
    bodyrt_result result;
    CHECK(bodyrt_run(pipeline, pixels, WIDTH, HEIGHT, 3 * WIDTH, BODYRT_RGB, BOX, 1, &result));
    CHECK(bodyrt_release(result));
}

typedef struct {
    bodyrt_pipeline pipeline;
    int runs;
} worker_args;

static void *worker(void *argument)
{
    worker_args *args = argument;
    for (int run = 0; run < args->runs; run++)
        run_once(args->pipeline);
    return NULL;
}

static bodyrt_pipeline open_pipeline(const char *bundle, int threads)
{
    bodyrt_options options = bodyrt_default_options();
    options.threads = threads;
    bodyrt_pipeline pipeline;
    CHECK(bodyrt_create(bundle, &options, &pipeline));
    run_once(pipeline); /* warm-up: the first call compiles nothing more, but touches every page */
    return pipeline;
}

int main(int argc, char **argv)
{
    if (argc != 3 || atoi(argv[2]) < 2) {
        fprintf(stderr, "usage: %s BUNDLE RUNS (RUNS >= 2)\n", argv[0]);
        return 2;
    }
    int runs = atoi(argv[2]) / HOST_THREADS * HOST_THREADS;
    pixels = malloc((size_t)WIDTH * HEIGHT * 3);
    uint32_t state = 12345;
    for (size_t i = 0; i < (size_t)WIDTH * HEIGHT * 3; i++) {
        state = state * 1664525u + 1013904223u;
        pixels[i] = (uint8_t)(state >> 24);
    }

    bodyrt_pipeline shared = open_pipeline(argv[1], HOST_THREADS);
    double start = now_s();
    for (int run = 0; run < runs; run++)
        run_once(shared);
    double shared_s = now_s() - start;
    CHECK(bodyrt_destroy(shared));

    worker_args args[HOST_THREADS];
    pthread_t threads[HOST_THREADS];
    for (int i = 0; i < HOST_THREADS; i++)
        args[i] = (worker_args){open_pipeline(argv[1], 1), runs / HOST_THREADS};
    start = now_s();
    for (int i = 0; i < HOST_THREADS; i++)
        if (pthread_create(&threads[i], NULL, worker, &args[i]) != 0)
            return 1;
    for (int i = 0; i < HOST_THREADS; i++)
        pthread_join(threads[i], NULL);
    double per_thread_s = now_s() - start;
    for (int i = 0; i < HOST_THREADS; i++)
        CHECK(bodyrt_destroy(args[i].pipeline));

    printf("{\"runs\": %d, \"shared_runs_per_s\": %.3f, \"per_thread_runs_per_s\": %.3f, \"shared_s\": %.3f, "
           "\"per_thread_s\": %.3f}\n", runs, runs / shared_s, runs / per_thread_s, shared_s, per_thread_s);
    free(pixels);
    return 0;
}
