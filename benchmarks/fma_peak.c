/* The CPU's fp32 multiply-add peak: every thread runs 16 independent chains of AVX-512 FMAs, which keeps both
 * FMA ports busy, and nothing touches memory. bench_kernel_ceiling.py compiles and runs it to say how far the FLOP
 * floor's conv is from what the cores can do at all.
 *
 *     cc -O2 -mavx512f -fopenmp benchmarks/fma_peak.c -o fma_peak && OMP_NUM_THREADS=2 ./fma_peak
 *
 * Prints one line: "<GFLOP/s>", the best of five runs of ITERATIONS steps (argument 1) on OMP_NUM_THREADS threads.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

enum { CHAINS = 16, LANES = 16 };

int main(int argc, char **argv) {
    const long iterations = argc > 1 ? atol(argv[1]) : 50000000L;
    double best = 0.0;
    for (int run = 0; run < 5; run++) {
        float sink = 0.0f;
        const double start = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
        {
            __m512 acc[CHAINS];
            for (int k = 0; k < CHAINS; k++) acc[k] = _mm512_set1_ps(1.0f + k * 1e-7f);
            const __m512 scale = _mm512_set1_ps(0.9999999f), shift = _mm512_set1_ps(1e-7f);
            for (long i = 0; i < iterations; i++) {
#pragma GCC unroll 16
                for (int k = 0; k < CHAINS; k++) acc[k] = _mm512_fmadd_ps(acc[k], scale, shift);
            }
            __m512 total = acc[0];
            for (int k = 1; k < CHAINS; k++) total = _mm512_add_ps(total, acc[k]);
            sink += _mm512_reduce_add_ps(total);  /* the result is used: the loop cannot be dropped */
        }
        const double seconds = omp_get_wtime() - start;
        const double gflops = 2.0 * CHAINS * LANES * (double)iterations * omp_get_max_threads() / seconds / 1e9;
        if (gflops > best) best = gflops;
        if (sink == 0.0f) fprintf(stderr, "unexpected sum\n");
    }
    printf("%.1f\n", best);
    return 0;
}
