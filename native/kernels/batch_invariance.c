/*
 * pykvd-batch-invariance: does a row's matmul (or attention) result depend on its batch?
 *
 * usage: pykvd-batch-invariance --type NAME [--rows M] [--cols K] [--max-batch N] [--threads T]
 *                               [--repack 0|1] [--invariant 0|1] [--seed S] [--op mul_mat|flash_attn]
 *
 * Multiplies a random M x K weight matrix of ggml type NAME (quantized by ggml) by a random
 * K x N activation matrix once, then by every window of n consecutive activation rows for
 * n = 1..N (the window's start moves with n), on the CPU backend, and compares each window's
 * result with the same rows of the full product bit for bit. With --repack 1 the weights live in
 * the CPU's repacked ("extra") buffer type, as llama.cpp loads them by default. --invariant sets
 * the backend's batch-invariant mode (ggml-cpu-batch-invariant.h).
 *
 * --op flash_attn checks ggml_flash_attn_ext instead: N query rows at positions 0..N-1 over N
 * random keys and values of type NAME (F16 or F32) with a causal mask, once, then every window of
 * n rows, each over the keys a KV cache would show it (its last position + 1, padded to 256 as
 * llama.cpp pads n_kv). --cols is the head size, --rows the number of query heads; every two
 * query heads share a K/V head.
 *
 * Prints one JSON object: the settings, how many batch sizes were checked and which ones gave a
 * result that differs from the full product's. Exit code 0 when it ran (whatever it found), 2 on
 * bad arguments, 3 when --repack 1 is asked of a type this CPU does not repack.
 */
#include "ggml-backend.h"
#include "ggml-cpu-batch-invariant.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct options {
    const char * type_name;
    int          rows, cols, max_batch, threads, repack, invariant;
    unsigned     seed;
    bool         flash_attn;
};

static int parse_args(int argc, char ** argv, struct options * o) {
    *o = (struct options){NULL, 128, 512, 600, 2, 0, 1, 1, false};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char * a = argv[i];
        const char * v = argv[i + 1];
        if (!strcmp(a, "--type")) o->type_name = v;
        else if (!strcmp(a, "--rows")) o->rows = atoi(v);
        else if (!strcmp(a, "--cols")) o->cols = atoi(v);
        else if (!strcmp(a, "--max-batch")) o->max_batch = atoi(v);
        else if (!strcmp(a, "--threads")) o->threads = atoi(v);
        else if (!strcmp(a, "--repack")) o->repack = atoi(v);
        else if (!strcmp(a, "--invariant")) o->invariant = atoi(v);
        else if (!strcmp(a, "--seed")) o->seed = (unsigned) atoi(v);
        else if (!strcmp(a, "--op") && (!strcmp(v, "mul_mat") || !strcmp(v, "flash_attn")))
            o->flash_attn = !strcmp(v, "flash_attn");
        else return -1;
    }
    if (argc % 2 == 0 || o->type_name == NULL) return -1;
    if (o->rows < 1 || o->rows > 4096 || o->cols < 1 || o->cols > 16384) return -1;
    if (o->max_batch < 1 || o->max_batch > 4096 || o->threads < 1 || o->threads > 256) return -1;
    if (o->flash_attn && (o->rows % 2 != 0 || o->rows > 64 || o->cols > 512)) return -1;
    return 0;
}

static int type_by_name(const char * name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * tn = ggml_type_name((enum ggml_type) t);
        if (tn != NULL && ggml_get_type_traits((enum ggml_type) t)->blck_size > 0 && !strcasecmp(tn, name)) return t;
    }
    return -1;
}

// xorshift: the same matrices on every machine for the same seed
static float next_uniform(uint32_t * state) {
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return (float) (x >> 8) / (float) (1u << 24) * 2.0f - 1.0f;
}

static float * random_floats(int64_t n, uint32_t * state) {
    float * v = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; ++i) v[i] = next_uniform(state);
    return v;
}

static ggml_backend_buffer_type_t weight_buffer_type(bool repack) {
    if (!repack) return ggml_backend_cpu_buffer_type();
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    typedef ggml_backend_buffer_type_t * (*get_extra_t)(ggml_backend_dev_t);
    get_extra_t get_extra = (get_extra_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    for (ggml_backend_buffer_type_t * b = get_extra ? get_extra(dev) : NULL; b && *b; ++b) {
        if (strstr(ggml_backend_buft_name(*b), "REPACK")) return *b;
    }
    return NULL;
}

// The weights in ggml's layout for their type; an importance matrix of ones for the types that need one.
static void * quantized_weights(enum ggml_type type, const float * w, int rows, int cols) {
    const size_t size = ggml_row_size(type, cols) * rows;
    void *       q    = malloc(size);
    if (type == GGML_TYPE_F32) {
        memcpy(q, w, size);
        return q;
    }
    float * imatrix = malloc(sizeof(float) * cols);
    for (int i = 0; i < cols; ++i) imatrix[i] = 1.0f;
    ggml_quantize_init(type);
    ggml_quantize_chunk(type, w, q, 0, rows, cols, ggml_quantize_requires_imatrix(type) ? imatrix : NULL);
    free(imatrix);
    return q;
}

// dst[rows x n] = W * x[cols x n]
static bool multiply(ggml_backend_t cpu, struct ggml_tensor * w, const float * x, int n, float * dst) {
    struct ggml_init_params ip  = {ggml_tensor_overhead() * 4 + ggml_graph_overhead(), NULL, true};
    struct ggml_context *   ctx = ggml_init(ip);
    struct ggml_tensor *    xt  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], n);
    struct ggml_tensor *    y   = ggml_mul_mat(ctx, w, xt);
    struct ggml_cgraph *    gf  = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, cpu);
    bool                  ok  = buf != NULL;
    if (ok) {
        ggml_backend_tensor_set(xt, x, 0, ggml_nbytes(xt));
        ok = ggml_backend_graph_compute(cpu, gf) == GGML_STATUS_SUCCESS;
        if (ok) ggml_backend_tensor_get(y, dst, 0, ggml_nbytes(y));
        ggml_backend_buffer_free(buf);
    }
    ggml_free(ctx);
    return ok;
}

// One attention problem: q [dk, n_head, n_q] F32 per position, k and v [dk, n_head / 2, n_q] of
// the K/V type, all positions 0..n_q-1.
struct attention {
    enum ggml_type kv_type;
    int            dk, n_head, n_q;
    float *        q;
    void *         k;
    void *         v;
};

static void * kv_rows(enum ggml_type type, const float * f, int64_t n) {
    void * out = malloc(ggml_row_size(type, n));
    if (type == GGML_TYPE_F16) ggml_fp32_to_fp16_row(f, out, n);
    else memcpy(out, f, sizeof(float) * n);
    return out;
}

// dst [dk, n_head, n] = attention of the n queries at positions pos0.. over the keys 0..n_kv-1.
static bool attend(ggml_backend_t cpu, const struct attention * a, int pos0, int n, int n_kv, float * dst) {
    const int               n_head_kv = a->n_head / 2;
    struct ggml_init_params ip        = {ggml_tensor_overhead() * 12 + ggml_graph_overhead(), NULL, true};
    struct ggml_context *   ctx       = ggml_init(ip);
    struct ggml_tensor *    q         = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, a->dk, a->n_head, n);
    struct ggml_tensor *    k         = ggml_new_tensor_3d(ctx, a->kv_type, a->dk, n_head_kv, n_kv);
    struct ggml_tensor *    v         = ggml_new_tensor_3d(ctx, a->kv_type, a->dk, n_head_kv, n_kv);
    struct ggml_tensor *    mask      = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, n_kv, n);
    struct ggml_tensor *    out       = ggml_flash_attn_ext(ctx, ggml_permute(ctx, q, 0, 2, 1, 3),
                                                            ggml_permute(ctx, k, 0, 2, 1, 3),
                                                            ggml_permute(ctx, v, 0, 2, 1, 3), mask,
                                                            0.125f, 0.0f, 0.0f);  // 1/sqrt(64): any scale will do
    ggml_prec_set_acc(out, GGML_PREC_F32);
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, cpu);
    bool                  ok  = buf != NULL;
    if (ok) {
        const size_t kv_row = ggml_row_size(a->kv_type, (int64_t) a->dk * n_head_kv);
        ggml_backend_tensor_set(q, a->q + (int64_t) pos0 * a->dk * a->n_head, 0, ggml_nbytes(q));
        ggml_backend_tensor_set(k, a->k, 0, kv_row * n_kv);
        ggml_backend_tensor_set(v, a->v, 0, kv_row * n_kv);
        ggml_fp16_t * m = malloc(ggml_nbytes(mask));
        for (int i = 0; i < n; ++i) {
            for (int j = 0; j < n_kv; ++j) m[(int64_t) i * n_kv + j] = ggml_fp32_to_fp16(j <= pos0 + i ? 0.0f : -INFINITY);
        }
        ggml_backend_tensor_set(mask, m, 0, ggml_nbytes(mask));
        free(m);
        ok = ggml_backend_graph_compute(cpu, gf) == GGML_STATUS_SUCCESS;
        if (ok) ggml_backend_tensor_get(out, dst, 0, ggml_nbytes(out));
        ggml_backend_buffer_free(buf);
    }
    ggml_free(ctx);
    return ok;
}

static int check_attention(ggml_backend_t cpu, const struct options * o, enum ggml_type type) {
    if (type != GGML_TYPE_F16 && type != GGML_TYPE_F32) {
        fprintf(stderr, "--op flash_attn takes F16 or F32 keys and values\n");
        return 2;
    }
    const int64_t    N   = o->max_batch, per_row = (int64_t) o->cols * o->rows;
    uint32_t         state = o->seed * 2654435761u + 1u;
    float *          kf    = random_floats(N * per_row / 2, &state);
    float *          vf    = random_floats(N * per_row / 2, &state);
    struct attention a     = {type, o->cols, o->rows, (int) N, random_floats(N * per_row, &state),
                              kv_rows(type, kf, N * per_row / 2), kv_rows(type, vf, N * per_row / 2)};
    float *          full  = malloc(sizeof(float) * N * per_row);
    float *          part  = malloc(sizeof(float) * N * per_row);
    if (!attend(cpu, &a, 0, (int) N, (int) N, full)) {
        fprintf(stderr, "the full attention failed\n");
        return 2;
    }
    printf("{\"op\": \"flash_attn\", \"type\": \"%s\", \"head_size\": %d, \"heads\": %d, \"threads\": %d, "
           "\"invariant\": %s, \"batch_sizes\": %d, \"differing_batch_sizes\": [",
           ggml_type_name(type), o->cols, o->rows, o->threads, o->invariant ? "true" : "false", o->max_batch);
    int n_differ = 0;
    for (int n = 1; n <= N; ++n) {
        const int start = (int) (((int64_t) n * 7919) % (N - n + 1));
        const int padded = ((start + n + 255) / 256) * 256;  // llama.cpp's n_kv for keys 0..start+n-1
        const int n_kv   = padded < N ? padded : (int) N;
        if (!attend(cpu, &a, start, n, n_kv, part)) {
            fprintf(stderr, "the attention of %d rows failed\n", n);
            return 2;
        }
        if (memcmp(part, full + start * per_row, sizeof(float) * per_row * n) != 0) {
            printf(n_differ++ ? ", %d" : "%d", n);
        }
    }
    printf("]}\n");
    free(part);
    free(full);
    free(a.q);
    free(a.k);
    free(a.v);
    free(kf);
    free(vf);
    return 0;
}

int main(int argc, char ** argv) {
    struct options o;
    if (parse_args(argc, argv, &o) != 0) {
        fprintf(stderr,
                "usage: %s --type NAME [--rows M] [--cols K] [--max-batch N] [--threads T] [--repack 0|1] "
                "[--invariant 0|1] [--seed S] [--op mul_mat|flash_attn]\n",
                argv[0]);
        return 2;
    }
    const int type = type_by_name(o.type_name);
    if (type < 0 || (!o.flash_attn && o.cols % ggml_blck_size((enum ggml_type) type) != 0)) {
        fprintf(stderr, "unknown type %s, or --cols not a multiple of its block size\n", o.type_name);
        return 2;
    }
    ggml_backend_buffer_type_t buft = weight_buffer_type(o.repack != 0);
    if (buft == NULL) {
        fprintf(stderr, "this CPU backend has no repacked buffer type\n");
        return 2;
    }

    ggml_backend_t cpu = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(cpu, o.threads);
    ggml_backend_cpu_set_batch_invariant(cpu, o.invariant != 0);
    if (o.flash_attn) {
        const int rc = check_attention(cpu, &o, (enum ggml_type) type);
        ggml_backend_free(cpu);
        return rc;
    }

    struct ggml_init_params ip    = {ggml_tensor_overhead(), NULL, true};
    struct ggml_context *   ctx_w = ggml_init(ip);
    struct ggml_tensor *    w     = ggml_new_tensor_2d(ctx_w, (enum ggml_type) type, o.cols, o.rows);
    ggml_backend_buffer_t   wbuf  = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, buft);
    ggml_backend_buffer_set_usage(wbuf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

    if (o.repack && w->extra == NULL) {
        // the repacked buffer type keeps no layout of its own for this type on this CPU
        fprintf(stderr, "%s weights are not repacked on this CPU\n", ggml_type_name((enum ggml_type) type));
        return 3;
    }

    uint32_t state = o.seed * 2654435761u + 1u;
    float *  wf    = random_floats((int64_t) o.rows * o.cols, &state);
    void *   wq    = quantized_weights((enum ggml_type) type, wf, o.rows, o.cols);
    ggml_backend_tensor_set(w, wq, 0, ggml_nbytes(w));

    float * x    = random_floats((int64_t) o.cols * o.max_batch, &state);
    float * full = malloc(sizeof(float) * o.rows * o.max_batch);
    float * part = malloc(sizeof(float) * o.rows * o.max_batch);
    if (!multiply(cpu, w, x, o.max_batch, full)) {
        fprintf(stderr, "the full product failed\n");
        return 2;
    }

    printf("{\"type\": \"%s\", \"rows\": %d, \"cols\": %d, \"threads\": %d, \"repacked\": %s, \"invariant\": %s, ",
           ggml_type_name((enum ggml_type) type), o.rows, o.cols, o.threads, o.repack ? "true" : "false",
           o.invariant ? "true" : "false");
    printf("\"batch_sizes\": %d, \"differing_batch_sizes\": [", o.max_batch);
    int n_differ = 0;
    for (int n = 1; n <= o.max_batch; ++n) {
        const int start = (int) (((int64_t) n * 7919) % (o.max_batch - n + 1));
        if (!multiply(cpu, w, x + (int64_t) start * o.cols, n, part)) {
            fprintf(stderr, "the product of %d rows failed\n", n);
            return 2;
        }
        if (memcmp(part, full + (int64_t) start * o.rows, sizeof(float) * o.rows * n) != 0) {
            printf(n_differ++ ? ", %d" : "%d", n);
        }
    }
    printf("]}\n");

    free(part);
    free(full);
    free(x);
    free(wq);
    free(wf);
    ggml_backend_buffer_free(wbuf);
    ggml_free(ctx_w);
    ggml_backend_free(cpu);
    return 0;
}
