/* A host stand-in for the libcublas functions mochac calls directly
   (mochac/runtime/cublas_direct.py), with cuBLAS 13's prototypes and its
   argument checks. "Device" pointers are host pointers, as in
   tests/host_cupy.py.

   A GEMM call checks its arguments, stores them with the values of alpha
   and beta (host pointer mode reads them during the call), and hands the
   record's number to the submit callback with the handle's stream. The
   test harness runs fake_cublas_run(number) on that stream: at once,
   later, or at each replay of a captured graph. */
#include <stdlib.h>

typedef struct fake_handle {
    void *stream;
} fake_handle;

typedef struct gemm_record {
    int is_double, trans_a, trans_b, m, n, k, lda, ldb, ldc;
    double alpha, beta;
    const void *a, *b;
    void *c;
} gemm_record;

typedef void (*submit_fn)(void *stream, long long record);

static submit_fn submit;
static gemm_record *records;
static long long record_count, record_capacity;
static int live_handles;

void fake_cublas_set_submit(submit_fn function) { submit = function; }

int fake_cublas_live_handles(void) { return live_handles; }

int cublasCreate_v2(fake_handle **handle)
{
    *handle = calloc(1, sizeof **handle);
    if (*handle == NULL)
        return 3; /* CUBLAS_STATUS_ALLOC_FAILED */
    ++live_handles;
    return 0;
}

int cublasDestroy_v2(fake_handle *handle)
{
    if (handle == NULL)
        return 1; /* CUBLAS_STATUS_NOT_INITIALIZED */
    free(handle);
    --live_handles;
    return 0;
}

int cublasSetStream_v2(fake_handle *handle, void *stream)
{
    if (handle == NULL)
        return 1;
    handle->stream = stream;
    return 0;
}

static int at_least_one(int value) { return value > 1 ? value : 1; }

/* cuBLAS's CUBLAS_STATUS_INVALID_VALUE cases of gemm, column-major. */
static int check_gemm(int trans_a, int trans_b, int m, int n, int k, int lda, int ldb,
                      int ldc)
{
    if (trans_a < 0 || trans_a > 1 || trans_b < 0 || trans_b > 1)
        return 7;
    if (m < 0 || n < 0 || k < 0)
        return 7;
    if (lda < at_least_one(trans_a ? k : m))
        return 7;
    if (ldb < at_least_one(trans_b ? n : k))
        return 7;
    if (ldc < at_least_one(m))
        return 7;
    return 0;
}

static int record_gemm(fake_handle *handle, gemm_record record)
{
    if (handle == NULL || submit == NULL)
        return 1;
    int status = check_gemm(record.trans_a, record.trans_b, record.m, record.n,
                            record.k, record.lda, record.ldb, record.ldc);
    if (status != 0)
        return status;
    if (record_count == record_capacity) {
        long long capacity = record_capacity ? 2 * record_capacity : 64;
        gemm_record *grown = realloc(records, capacity * sizeof *records);
        if (grown == NULL)
            return 3;
        records = grown;
        record_capacity = capacity;
    }
    records[record_count] = record;
    submit(handle->stream, record_count);
    ++record_count;
    return 0;
}

int cublasSgemm_v2(fake_handle *handle, int trans_a, int trans_b, int m, int n, int k,
                   const float *alpha, const float *a, int lda, const float *b, int ldb,
                   const float *beta, float *c, int ldc)
{
    gemm_record record = {0, trans_a, trans_b, m, n, k, lda, ldb, ldc,
                          *alpha, *beta, a, b, c};
    return record_gemm(handle, record);
}

int cublasDgemm_v2(fake_handle *handle, int trans_a, int trans_b, int m, int n, int k,
                   const double *alpha, const double *a, int lda, const double *b,
                   int ldb, const double *beta, double *c, int ldc)
{
    gemm_record record = {1, trans_a, trans_b, m, n, k, lda, ldb, ldc,
                          *alpha, *beta, a, b, c};
    return record_gemm(handle, record);
}

/* Element (i, j) of op(x), column-major with leading dimension ld. */
static double element(const gemm_record *r, const void *x, int trans, int ld, int i,
                      int j)
{
    long long at = trans ? (long long)j + (long long)i * ld : (long long)i + (long long)j * ld;
    return r->is_double ? ((const double *)x)[at] : ((const float *)x)[at];
}

/* C = alpha op(A) op(B) + beta C, column-major; beta = 0 ignores C's values,
   as cuBLAS does. */
void fake_cublas_run(long long number)
{
    const gemm_record *r = &records[number];
    for (int j = 0; j < r->n; ++j) {
        for (int i = 0; i < r->m; ++i) {
            double sum = 0;
            for (int p = 0; p < r->k; ++p)
                sum += element(r, r->a, r->trans_a, r->lda, i, p)
                       * element(r, r->b, r->trans_b, r->ldb, p, j);
            long long at = (long long)i + (long long)j * r->ldc;
            double old = 0;
            if (r->beta != 0)
                old = r->is_double ? ((double *)r->c)[at] : ((float *)r->c)[at];
            double value = r->alpha * sum + r->beta * old;
            if (r->is_double)
                ((double *)r->c)[at] = value;
            else
                ((float *)r->c)[at] = (float)value;
        }
    }
}
