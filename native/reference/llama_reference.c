/*
 * pykvd-llama-reference: a plain llama.cpp greedy generation loop, written only
 * against llama.h. pykvd's tests compare its own output with this program's,
 * token for token, and bench/overhead.py compares their speeds.
 *
 * usage: pykvd-llama-reference -m MODEL -p PROMPT [-n N] [-c N_CTX] [-b N_BATCH]
 *                              [-t THREADS] [--flash-attn -1|0|1] [--extra-bufts 0|1]
 *                              [--batch-invariant 0|1] [--ignore-eos]
 * Prints one JSON object: prompt and generated token ids, and the wall time of
 * the prefill and of the decode loop.
 */
#include "llama-kvd.h"
#include "llama.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct options {
    const char * model;
    const char * prompt;
    int n_predict, n_ctx, n_batch, n_threads, flash_attn, extra_bufts, batch_invariant, ignore_eos;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void quiet_log(enum ggml_log_level level, const char * text, void * data) {
    (void) data;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int parse_args(int argc, char ** argv, struct options * o) {
    *o = (struct options){NULL, NULL, 32, 2048, 512, 2, 0, 0, 0, 0};
    for (int i = 1; i < argc; ++i) {
        const char * a = argv[i];
        const char * v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = 1;
            continue;
        }
        if (v == NULL) return -1;
        if (!strcmp(a, "-m"))
            o->model = v;
        else if (!strcmp(a, "-p"))
            o->prompt = v;
        else if (!strcmp(a, "-n"))
            o->n_predict = atoi(v);
        else if (!strcmp(a, "-c"))
            o->n_ctx = atoi(v);
        else if (!strcmp(a, "-b"))
            o->n_batch = atoi(v);
        else if (!strcmp(a, "-t"))
            o->n_threads = atoi(v);
        else if (!strcmp(a, "--flash-attn"))
            o->flash_attn = atoi(v);
        else if (!strcmp(a, "--extra-bufts"))
            o->extra_bufts = atoi(v);
        else if (!strcmp(a, "--batch-invariant"))
            o->batch_invariant = atoi(v);
        else
            return -1;
        ++i;
    }
    return o->model && o->prompt ? 0 : -1;
}

static void print_tokens(const char * key, const llama_token * t, int n) {
    printf("\"%s\": [", key);
    for (int i = 0; i < n; ++i) printf(i ? ", %d" : "%d", t[i]);
    printf("]");
}

int main(int argc, char ** argv) {
    struct options o;
    if (parse_args(argc, argv, &o) != 0) {
        fprintf(stderr,
                "usage: %s -m MODEL -p PROMPT [-n N] [-c N_CTX] [-b N_BATCH] [-t THREADS] "
                "[--flash-attn -1|0|1] [--extra-bufts 0|1] [--batch-invariant 0|1] [--ignore-eos]\n",
                argv[0]);
        return 2;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = o.extra_bufts != 0;
    struct llama_model * model = llama_model_load_from_file(o.model, mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", o.model);
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = o.n_ctx;
    cp.n_batch = o.n_batch;
    cp.n_ubatch = o.n_batch;
    cp.n_threads = o.n_threads;
    cp.n_threads_batch = o.n_threads;
    cp.flash_attn_type = (enum llama_flash_attn_type) o.flash_attn;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    if (o.batch_invariant && llama_kvd_set_batch_invariant(ctx, true) != LLAMA_KVD_OK) {
        fprintf(stderr, "this build has no batch-invariant kernels\n");
        return 1;
    }

    const int len = (int) strlen(o.prompt);
    llama_token * prompt = malloc(sizeof(llama_token) * (len + 8));
    const int n_prompt = llama_tokenize(vocab, o.prompt, len, prompt, len + 8, true, true);
    if (n_prompt <= 0 || n_prompt + o.n_predict > o.n_ctx) {
        fprintf(stderr, "prompt is empty or does not fit the context\n");
        return 1;
    }

    const double t0 = now_s();
    for (int i = 0; i < n_prompt; i += o.n_batch) {
        const int n = n_prompt - i < o.n_batch ? n_prompt - i : o.n_batch;
        if (llama_decode(ctx, llama_batch_get_one(prompt + i, n))) {
            fprintf(stderr, "prefill failed\n");
            return 1;
        }
    }
    const double t1 = now_s();

    struct llama_sampler * greedy = llama_sampler_init_greedy();
    llama_token * out = malloc(sizeof(llama_token) * (o.n_predict + 1));
    int n_out = 0, n_steps = 0;
    while (n_out < o.n_predict) {
        llama_token t = llama_sampler_sample(greedy, ctx, -1);
        if (!o.ignore_eos && llama_vocab_is_eog(vocab, t)) break;
        out[n_out++] = t;
        if (n_out == o.n_predict) break;
        if (llama_decode(ctx, llama_batch_get_one(&t, 1))) {
            fprintf(stderr, "decode failed\n");
            return 1;
        }
        ++n_steps;
    }
    const double t2 = now_s();

    printf("{");
    print_tokens("prompt_tokens", prompt, n_prompt);
    printf(", ");
    print_tokens("tokens", out, n_out);
    printf(", \"prefill_s\": %.6f, \"decode_s\": %.6f, \"n_decode_steps\": %d}\n", t1 - t0, t2 - t1, n_steps);

    llama_sampler_free(greedy);
    free(out);
    free(prompt);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
