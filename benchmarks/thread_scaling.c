/*
 * How much faster a plain OpenMP loop runs on 2 threads than on 1 here.
 *
 * Each element goes through 20 dependent multiply-adds, so the loop is
 * bound by the floating-point units, not by memory. On a machine with two
 * real cores the 2-thread time is about half the 1-thread time. A smaller
 * gain means the two CPUs share a core, or the host shares them.
 *
 *   gcc -O2 -fopenmp benchmarks/thread_scaling.c -o /tmp/thread_scaling
 *   /tmp/thread_scaling
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
    const int n = 1 << 22;
    float *values = malloc((size_t)n * sizeof(float));
    if (values == NULL)
        return 1;
    for (int i = 0; i < n; ++i)
        values[i] = i * 1e-6f;
    double times[3] = {0, 0, 0};
    for (int threads = 1; threads <= 2; ++threads) {
        omp_set_num_threads(threads);
        double best = 1e9;
        for (int round = 0; round < 20; ++round) {
            double start = omp_get_wtime();
#pragma omp parallel for schedule(static)
            for (int i = 0; i < n; ++i) {
                float x = values[i];
                for (int k = 0; k < 20; ++k)
                    x = x * 0.999f + 0.001f;
                values[i] = x;
            }
            double elapsed = omp_get_wtime() - start;
            if (elapsed < best)
                best = elapsed;
        }
        times[threads] = best;
        printf("%d thread(s): %.2f ms (best of 20)\n", threads, best * 1e3);
    }
    printf("speed-up of 2 threads over 1: %.2fx\n", times[1] / times[2]);
    free(values);
    return 0;
}
