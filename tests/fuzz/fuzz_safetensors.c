/*
** fuzz_safetensors.c: the safetensors loader on arbitrary files.
**
** Each input is a whole file given to dpo_st_load. A refused file must say
** which file it was; a loaded one must hold tensors whose every element can
** be read (views of the mapping included) and whose names and metadata are
** in the promised order. A loaded file that can be saved again (its names
** are savable) must load back to the same names, shapes, values and
** metadata. The one-tensor-at-a-time reader accepts exactly the files the
** loader accepts and reads every tensor to the loader's values; saved as
** BF16 and F16, the float tensors load back as their rounded values.
*/
#include "fuzz.h"
#include "data/safetensors.h"

/* Every element of t, read; a checksum the compiler cannot drop. */
static uint32_t touch(const dpo_tensor *t) {
    int64_t n = dpo_tensor_numel(t);
    uint32_t h = 0;
    FUZZ_CHECK(n >= 0 && dpo_tensor_is_contiguous(t));
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, (const char *)t->storage->data + 4 * (t->offset + i), 4);
        h = h * 31 + u;
    }
    return h;
}

static int same_tensor(const dpo_tensor *a, const dpo_tensor *b) {
    int64_t n = dpo_tensor_numel(a);
    if (a->dtype != b->dtype || !dpo_tensor_same_shape(a, b)) return 0;
    return n == 0 || memcmp((const char *)a->storage->data + 4 * a->offset,
                            (const char *)b->storage->data + 4 * b->offset, (size_t)n * 4) == 0;
}

/* The reader agrees with the loader f (NULL when the file was refused). */
static void check_reader(const char *path, const dpo_st_file *f) {
    dpo_error e;
    dpo_st_reader *r = dpo_st_open(path, &e);
    if (!r) {
        FUZZ_CHECK(f == NULL && strstr(e.msg, path) != NULL);
        return;
    }
    if (!f) { /* a sound header: the loader refused a value, so must the reader */
        int refused = 0;
        for (int k = 0; k < dpo_st_count(r); k++) {
            const dpo_st_info *in = dpo_st_info_at(r, k);
            dpo_tensor *t = dpo_tensor_zeros(in->to, in->ndim, in->shape, &e);
            if (!t) { /* a shape no tensor can have: the loader refused it too */
                refused = 1;
                continue;
            }
            if (dpo_st_read(r, k, t, &e) != DPO_OK) {
                FUZZ_CHECK(e.status == DPO_ERR_IO && strstr(e.msg, path) != NULL);
                refused = 1;
            }
            dpo_tensor_release(t);
        }
        FUZZ_CHECK(refused);
        dpo_st_close(r);
        return;
    }
    FUZZ_CHECK(dpo_st_count(r) == f->ntensors);
    for (int k = 0; k < f->ntensors; k++) {
        const dpo_st_info *in = dpo_st_info_at(r, k);
        dpo_tensor *t;
        FUZZ_CHECK(in && strcmp(in->name, f->names[k]) == 0 && dpo_st_index(r, in->name) == k);
        FUZZ_CHECK(strcmp(in->dtype, f->dtypes[k]) == 0 && in->to == f->tensors[k]->dtype);
        t = dpo_tensor_zeros(in->to, in->ndim, in->shape, &e);
        FUZZ_CHECK(t != NULL);
        FUZZ_CHECK(dpo_st_read(r, k, t, &e) == DPO_OK && same_tensor(t, f->tensors[k]));
        dpo_tensor_release(t);
    }
    dpo_st_close(r);
}

/* Saved with float tensors as `as`, f loads back to the rounded values. */
static void check_narrow(const dpo_st_file *f, dpo_st_float as, const char *out) {
    dpo_error e;
    dpo_st_file *g;
    if (dpo_st_save_as(out, f->ntensors, (const char *const *)f->names, f->tensors, 0, NULL, NULL,
                       as, &e) != DPO_OK)
        return;
    g = dpo_st_load(out, &e);
    FUZZ_CHECK(g != NULL && g->ntensors == f->ntensors);
    for (int k = 0; k < f->ntensors; k++) {
        const dpo_tensor *a = f->tensors[k], *b = g->tensors[k];
        int64_t n = dpo_tensor_numel(a);
        FUZZ_CHECK(a->dtype == b->dtype && dpo_tensor_same_shape(a, b));
        if (a->dtype != DPO_F32) {
            FUZZ_CHECK(same_tensor(a, b));
            continue;
        }
        FUZZ_CHECK(strcmp(g->dtypes[k], as == DPO_ST_BF16 ? "BF16" : "F16") == 0);
        for (int64_t i = 0; i < n; i++) {
            float x = dpo_f32(a)[i], y = dpo_f32(b)[i], want;
            want = as == DPO_ST_BF16 ? dpo_bf16_to_f32(dpo_f32_to_bf16(x))
                                     : dpo_f16_to_f32(dpo_f32_to_f16(x));
            FUZZ_CHECK(x != x ? y != y : memcmp(&y, &want, 4) == 0);
        }
    }
    dpo_st_free(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("in.safetensors", data, size);
    const char *out = fuzz_path("out.safetensors");
    dpo_error e;
    dpo_st_file *f = dpo_st_load(path, &e), *g;
    volatile uint32_t sink = 0;
    if (!f) {
        FUZZ_CHECK(e.status != DPO_OK && strstr(e.msg, path) != NULL);
        check_reader(path, NULL);
        return 0;
    }
    check_reader(path, f);
    for (int k = 0; k < f->ntensors; k++) {
        FUZZ_CHECK(f->tensors[k] != NULL && f->dtypes[k] != NULL);
        FUZZ_CHECK(k == 0 || strcmp(f->names[k - 1], f->names[k]) < 0);
        FUZZ_CHECK(dpo_st_find(f, f->names[k]) == f->tensors[k]);
        sink += touch(f->tensors[k]);
    }
    for (int k = 1; k < f->nmeta; k++) FUZZ_CHECK(strcmp(f->meta_keys[k - 1], f->meta_keys[k]) < 0);
    (void)sink;

    /* save and load again */
    if (dpo_st_save(out, f->ntensors, (const char *const *)f->names, f->tensors, f->nmeta,
                    (const char *const *)f->meta_keys, (const char *const *)f->meta_values,
                    &e) == DPO_OK) {
        g = dpo_st_load(out, &e);
        FUZZ_CHECK(g != NULL);
        FUZZ_CHECK(g->ntensors == f->ntensors && g->nmeta == f->nmeta);
        for (int k = 0; k < f->ntensors; k++) {
            FUZZ_CHECK(strcmp(f->names[k], g->names[k]) == 0);
            FUZZ_CHECK(same_tensor(f->tensors[k], g->tensors[k]));
        }
        for (int k = 0; k < f->nmeta; k++) {
            FUZZ_CHECK(strcmp(f->meta_keys[k], g->meta_keys[k]) == 0);
            FUZZ_CHECK(strcmp(f->meta_values[k], g->meta_values[k]) == 0);
        }
        dpo_st_free(g);
        check_narrow(f, DPO_ST_BF16, out);
        check_narrow(f, DPO_ST_F16, out);
    }
    dpo_st_free(f);
    return 0;
}
