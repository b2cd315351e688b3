/*
** fuzz_safetensors.c: the safetensors loader on arbitrary files.
**
** Each input is a whole file given to dpo_st_load. A refused file must say
** which file it was; a loaded one must hold tensors whose every element can
** be read (views of the mapping included) and whose names and metadata are
** in the promised order. A loaded file that can be saved again (its names
** are savable) must load back to the same names, shapes, values and
** metadata.
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("in.safetensors", data, size);
    const char *out = fuzz_path("out.safetensors");
    dpo_error e;
    dpo_st_file *f = dpo_st_load(path, &e), *g;
    volatile uint32_t sink = 0;
    if (!f) {
        FUZZ_CHECK(e.status != DPO_OK && strstr(e.msg, path) != NULL);
        return 0;
    }
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
    }
    dpo_st_free(f);
    return 0;
}
