/*
** safetensors.c: safetensors files (see safetensors.h for the format).
**
** Saving: the header is built with jansson (compact, "__metadata__" first,
** then the tensors in name order, each {"dtype", "shape", "data_offsets"}),
** padded with spaces to a multiple of 8 bytes; the file is written atomically
** through io.c (a temporary beside the target, fsync, rename).
**
** Loading: the file is mapped (MAP_PRIVATE) and the header checked in full
** before a byte of data is read: its length against the file size, the JSON
** (parsed with the exact length; NUL bytes, invalid UTF-8 and duplicate keys
** refused), every entry's dtype, shape and data_offsets against each other and
** the data section, and the byte ranges against each other (no overlap; gaps
** and trailing bytes are allowed). Keys of an entry other than dtype, shape
** and data_offsets are ignored, as the reference reader ignores them.
** Aligned F32/I32 tensors are views of the mapping, which a refcount keeps
** alive until the last view goes; the rest are converted into new tensors.
*/
#define _DEFAULT_SOURCE /* madvise(MADV_DONTNEED): glibc's posix_madvise ignores DONTNEED */
#include "data/safetensors.h"
#include "base/io.h"

#include <jansson.h>

#include <sys/mman.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- dtypes ------------------------------------------------------------------ */

typedef enum {
    K_F32,
    K_I32,
    K_F16,
    K_BF16,
    K_F64,
    K_F8_E4M3,
    K_F8_E5M2,
    K_BOOL,
    K_U8,
    K_I8,
    K_I16,
    K_U16,
    K_U32,
    K_I64,
    K_U64,
    K_COUNT
} st_kind;

static const struct {
    const char *name;
    int size;     /* bytes per element */
    dpo_dtype to; /* what it loads as */
} kinds[] = {
    {"F32", 4, DPO_F32}, {"I32", 4, DPO_I32},     {"F16", 2, DPO_F32},     {"BF16", 2, DPO_F32},
    {"F64", 8, DPO_F32}, {"F8_E4M3", 1, DPO_F32}, {"F8_E5M2", 1, DPO_F32}, {"BOOL", 1, DPO_I32},
    {"U8", 1, DPO_I32},  {"I8", 1, DPO_I32},      {"I16", 2, DPO_I32},     {"U16", 2, DPO_I32},
    {"U32", 4, DPO_I32}, {"I64", 8, DPO_I32},     {"U64", 8, DPO_I32},
};
_Static_assert(sizeof kinds / sizeof kinds[0] == K_COUNT, "kinds must describe every st_kind");

/* Dtypes of the format that this reader does not convert. */
static const char *const unsupported[] = {"C64", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", NULL};

static int kind_of(const char *name) {
    for (int k = 0; k < K_COUNT; k++)
        if (strcmp(kinds[k].name, name) == 0) return k;
    return -1;
}

/* ---- little-endian bytes ---------------------------------------------------- */

static int host_is_le(void) {
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static uint16_t rd16(const unsigned char *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const unsigned char *p) {
    return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- exact conversions to float32 ------------------------------------------ */

/* IEEE half: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float dpo_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, ex = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (ex == 0) { /* zero or subnormal: man * 2^-24, exact in float */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    if (ex == 31) return bits_f32(sign | 0x7f800000u | (man << 13)); /* inf, nan */
    return bits_f32(sign | ((ex + 112) << 23) | (man << 13));
}

/* bfloat16 is the top half of a float32. */
float dpo_bf16_to_f32(uint16_t b) {
    return bits_f32((uint32_t)b << 16);
}

/* OCP FP8 E4M3 (the "FN" variant): bias 7, no infinities, S.1111.111 is nan. */
static float e4m3_to_f32(unsigned char b) {
    uint32_t ex = (b >> 3) & 0xf, man = b & 7;
    float v;
    if (ex == 15 && man == 7) return bits_f32(((uint32_t)(b >> 7) << 31) | 0x7fc00000u);
    if (ex == 0)
        v = (float)man * 0x1p-9f;
    else
        v = bits_f32(((ex + 120) << 23) | (man << 20));
    return (b & 0x80) ? -v : v;
}

/* FP8 E5M2 is the top byte of an IEEE half. */
static float e5m2_to_f32(unsigned char b) {
    return dpo_f16_to_f32((uint16_t)(b << 8));
}

/* Round to nearest even, with overflow to infinity as IEEE does, spelled out
   so that no out-of-range conversion (undefined in C) is ever evaluated. */
static float f64_to_f32(double d) {
    if (isnan(d)) return signbit(d) ? -NAN : NAN;
    if (fabs(d) > (double)FLT_MAX) {
        /* FLT_MAX + half an ulp and beyond round to infinity. */
        float big = fabs(d) >= 0x1.ffffffp127 ? INFINITY : FLT_MAX;
        return d < 0 ? -big : big;
    }
    return (float)d;
}

/* ---- rounding float32 to the 16-bit formats ---------------------------------- */

/* Keep the top 16 bits, rounding the dropped 16 to nearest, ties to even (the
   carry runs into the exponent, so the largest finite values round up to
   infinity as IEEE says). NaN stays NaN of its sign with the quiet bit set. */
uint16_t dpo_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* To IEEE half, rounding to nearest even in every range: 65520 (halfway
   between the largest half, 65504, and 2^16) and beyond become infinity,
   values under 2^-14 become subnormals (multiples of 2^-24), 2^-25 and below
   zero. NaN stays NaN of its sign with the quiet bit set. */
uint16_t dpo_f32_to_f16(float x) {
    uint32_t u, a, sign, e, m, s, r, rem, half;
    memcpy(&u, &x, 4);
    sign = (u >> 16) & 0x8000u;
    a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520, and infinity */
    if (a >= 0x38800000u) {                                  /* a normal half */
        r = a + 0xfffu + ((a >> 13) & 1u);
        return (uint16_t)(sign | ((r >> 13) - (112u << 10)));
    }
    if (a <= 0x33000000u) return (uint16_t)sign; /* <= 2^-25: zero (the tie goes to even 0) */
    /* a subnormal half: the value in units of 2^-24 is M * 2^(e-126) */
    e = a >> 23;
    m = (a & 0x7fffffu) | 0x800000u;
    s = 126u - e; /* 14..24 */
    r = m >> s;
    rem = m & ((1u << s) - 1u);
    half = 1u << (s - 1u);
    if (rem > half || (rem == half && (r & 1u))) r++; /* may carry into the smallest normal */
    return (uint16_t)(sign | r);
}

/* ---- small helpers ---------------------------------------------------------------- */

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *c = (char *)malloc(n);
    if (c) memcpy(c, s, n);
    return c;
}

static void *io_failp(dpo_error *e, const char *path, int err) {
    return dpo_fail(e, DPO_ERR_IO, 0, "%s: %s", path, strerror(err));
}

/* Fill e and return s, for functions that return a status. */
static dpo_status fail_arg(dpo_error *e, int arg, const char *msg) {
    dpo_fail(e, DPO_ERR_ARG, arg, "%s", msg);
    return DPO_ERR_ARG;
}

static const char *json_kind(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

void dpo_st_free(dpo_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->ntensors; i++) {
        if (f->names) free(f->names[i]);
        if (f->tensors) dpo_tensor_release(f->tensors[i]);
    }
    for (int i = 0; i < f->nmeta; i++) {
        if (f->meta_keys) free(f->meta_keys[i]);
        if (f->meta_values) free(f->meta_values[i]);
    }
    free(f->names);
    free(f->tensors);
    free(f->dtypes);
    free(f->meta_keys);
    free(f->meta_values);
    free(f);
}

dpo_tensor *dpo_st_find(const dpo_st_file *f, const char *name) {
    for (int i = 0; f && i < f->ntensors; i++)
        if (strcmp(f->names[i], name) == 0) return f->tensors[i];
    return NULL;
}

/* ---- saving ------------------------------------------------------------------- */

typedef struct {
    const char *const *names;
    int i;
} named;

static int cmp_named(const void *a, const void *b) {
    const named *x = (const named *)a, *y = (const named *)b;
    return strcmp(x->names[x->i], y->names[y->i]);
}

/* Indices 0..n-1 sorted by names[i]; NULL when out of memory. */
static int *sorted_order(int n, const char *const *names) {
    named *tmp = (named *)malloc(sizeof *tmp * (size_t)(n ? n : 1));
    int *order = (int *)malloc(sizeof *order * (size_t)(n ? n : 1));
    if (!tmp || !order) {
        free(tmp), free(order);
        return NULL;
    }
    for (int i = 0; i < n; i++) tmp[i].names = names, tmp[i].i = i;
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_named);
    for (int i = 0; i < n; i++) order[i] = tmp[i].i;
    free(tmp);
    return order;
}

/* Elements narrowed to 16 bits per write: a bounded buffer, never a copy of the tensor. */
#define EMIT_CHUNK 4096

static const char *const float_names[] = {"F32", "BF16", "F16"};
_Static_assert(sizeof float_names / sizeof float_names[0] == DPO_ST_FLOAT_COUNT,
               "float_names must name every dpo_st_float");

/* Bytes per element of t in the file. */
static uint64_t stored_size(const dpo_tensor *t, dpo_st_float as) {
    return t->dtype == DPO_F32 && as != DPO_ST_F32 ? 2 : 4;
}

/* Write the elements of t as little-endian words: 4 bytes, or 2 for float32
   saved as BF16 or F16 (converted EMIT_CHUNK elements at a time). */
static dpo_status emit_tensor(dpo_afile *w, const dpo_tensor *t, dpo_st_float as, dpo_error *e) {
    int64_t n = dpo_tensor_numel(t);
    unsigned char *tmp = NULL;
    if (n == 0) return DPO_OK;
    if (stored_size(t, as) == 4 && dpo_tensor_is_contiguous(t) && host_is_le()) {
        dpo_afile_write(w, (const char *)t->storage->data + t->offset * 4, (size_t)n * 4);
        return DPO_OK;
    }
    if (!dpo_tensor_is_contiguous(t) || !host_is_le()) {
        tmp = (unsigned char *)dpo_alloc((size_t)n * 4);
        if (!tmp) {
            dpo_fail(e, DPO_ERR_MEM, 0, "out of memory packing a tensor of %lld elements",
                     (long long)n);
            return DPO_ERR_MEM;
        }
        dpo_tensor_pack(t, tmp);
    }
    if (stored_size(t, as) == 4) {
        for (int64_t i = 0; i < n && !host_is_le(); i++) { /* swap each word */
            unsigned char *q = tmp + 4 * i, c;
            c = q[0], q[0] = q[3], q[3] = c;
            c = q[1], q[1] = q[2], q[2] = c;
        }
        dpo_afile_write(w, tmp, (size_t)n * 4);
    } else {
        const float *src = tmp ? (const float *)(void *)tmp : dpo_f32(t);
        unsigned char out[2 * EMIT_CHUNK];
        for (int64_t i0 = 0; i0 < n; i0 += EMIT_CHUNK) {
            int64_t m = n - i0 < EMIT_CHUNK ? n - i0 : EMIT_CHUNK;
            for (int64_t j = 0; j < m; j++) {
                uint16_t h =
                    as == DPO_ST_BF16 ? dpo_f32_to_bf16(src[i0 + j]) : dpo_f32_to_f16(src[i0 + j]);
                out[2 * j] = (unsigned char)(h & 0xff);
                out[2 * j + 1] = (unsigned char)(h >> 8);
            }
            dpo_afile_write(w, out, (size_t)m * 2);
        }
    }
    dpo_free(tmp);
    return DPO_OK;
}

/* Check the arguments of dpo_st_save and build its (unpadded) header text. */
static char *build_header(int n, const char *const *names, dpo_tensor *const *tensors,
                          dpo_st_float as, const int *order, int nmeta, const char *const *mk,
                          const char *const *mv, const int *morder, dpo_error *e) {
    json_t *root = json_object(), *md = NULL;
    char *text = NULL;
    uint64_t off = 0;
    if (!root) return dpo_fail(e, DPO_ERR_MEM, 0, "out of memory");
    if (nmeta > 0) {
        md = json_object();
        if (!md || json_object_set_new(root, "__metadata__", md) != 0) goto oom;
        for (int k = 0; k < nmeta; k++) {
            int i = morder[k];
            json_t *v;
            if (k > 0 && strcmp(mk[i], mk[morder[k - 1]]) == 0) {
                dpo_fail(e, DPO_ERR_ARG, 5, "duplicate metadata key '%s'", mk[i]);
                goto fail;
            }
            v = json_string(mv[i]);
            if (!v) {
                dpo_fail(e, DPO_ERR_ARG, 6, "metadata value for '%s' is not valid UTF-8", mk[i]);
                goto fail;
            }
            if (json_object_set_new(md, mk[i], v) != 0) {
                dpo_fail(e, DPO_ERR_ARG, 5, "metadata key '%s' is not valid UTF-8", mk[i]);
                goto fail;
            }
        }
    }
    for (int k = 0; k < n; k++) {
        int i = order[k];
        const dpo_tensor *t = tensors[i];
        json_t *ent, *shape, *offs;
        uint64_t nbytes = (uint64_t)dpo_tensor_numel(t) * stored_size(t, as);
        if (k > 0 && strcmp(names[i], names[order[k - 1]]) == 0) {
            dpo_fail(e, DPO_ERR_ARG, 2, "duplicate tensor name '%s'", names[i]);
            goto fail;
        }
        ent = json_object();
        if (!ent) goto oom;
        if (json_object_set_new(root, names[i], ent) != 0) {
            dpo_fail(e, DPO_ERR_ARG, 2, "tensor name '%s' is not valid UTF-8", names[i]);
            goto fail;
        }
        shape = json_array();
        offs = json_array();
        if (json_object_set_new(ent, "dtype",
                                json_string(t->dtype == DPO_I32 ? "I32" : float_names[as])) ||
            json_object_set_new(ent, "shape", shape) ||
            json_object_set_new(ent, "data_offsets", offs))
            goto oom;
        for (int d = 0; d < t->ndim; d++)
            if (json_array_append_new(shape, json_integer((json_int_t)t->shape[d]))) goto oom;
        if (json_array_append_new(offs, json_integer((json_int_t)off)) ||
            json_array_append_new(offs, json_integer((json_int_t)(off + nbytes))))
            goto oom;
        off += nbytes;
    }
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) goto oom;
    json_decref(root);
    return text;
oom:
    dpo_fail(e, DPO_ERR_MEM, 0, "out of memory building the safetensors header");
fail:
    json_decref(root);
    return NULL;
}

dpo_status dpo_st_save(const char *path, int n, const char *const *names,
                       dpo_tensor *const *tensors, int nmeta, const char *const *meta_keys,
                       const char *const *meta_values, dpo_error *e) {
    return dpo_st_save_as(path, n, names, tensors, nmeta, meta_keys, meta_values, DPO_ST_F32, e);
}

dpo_status dpo_st_save_as(const char *path, int n, const char *const *names,
                          dpo_tensor *const *tensors, int nmeta, const char *const *meta_keys,
                          const char *const *meta_values, dpo_st_float as, dpo_error *e) {
    int *order = NULL, *morder = NULL;
    char *header = NULL;
    dpo_afile *w = NULL;
    dpo_status st = DPO_OK;
    size_t hlen, padded;
    unsigned char len8[8];

    if (!path || !*path) return fail_arg(e, 1, "empty path");
    if (n < 0 || nmeta < 0 || (n > 0 && (!names || !tensors)) ||
        (nmeta > 0 && (!meta_keys || !meta_values)))
        return fail_arg(e, 0, "negative counts or missing arrays");
    if ((int)as < 0 || as >= DPO_ST_FLOAT_COUNT) return fail_arg(e, 8, "unknown float format");
    for (int i = 0; i < n; i++) {
        if (!names[i] || !*names[i]) return fail_arg(e, 2, "tensor names must not be empty");
        if (strcmp(names[i], "__metadata__") == 0)
            return fail_arg(e, 2, "the name '__metadata__' is reserved for the metadata");
        if (!tensors[i]) return fail_arg(e, 3, "missing tensor");
    }
    for (int i = 0; i < nmeta; i++)
        if (!meta_keys[i] || !meta_values[i])
            return fail_arg(e, 5, "missing metadata key or value");

    order = sorted_order(n, names);
    morder = sorted_order(nmeta, meta_keys);
    if (!order || !morder) {
        st = DPO_ERR_MEM;
        dpo_fail(e, st, 0, "out of memory");
        goto done;
    }
    header = build_header(n, names, tensors, as, order, nmeta, meta_keys, meta_values, morder, e);
    if (!header) {
        st = e ? e->status : DPO_ERR_MEM;
        goto done;
    }
    w = dpo_afile_open(path, e);
    if (!w) {
        st = e ? e->status : DPO_ERR_IO;
        goto done;
    }
    hlen = strlen(header);
    padded = (hlen + 7) & ~(size_t)7;
    for (int b = 0; b < 8; b++) len8[b] = (unsigned char)((uint64_t)padded >> (8 * b));
    dpo_afile_write(w, len8, 8);
    dpo_afile_write(w, header, hlen);
    for (size_t k = hlen; k < padded; k++) dpo_afile_write(w, " ", 1);
    for (int k = 0; k < n; k++)
        if ((st = emit_tensor(w, tensors[order[k]], as, e)) != DPO_OK) {
            dpo_afile_abort(w);
            goto done;
        }
    st = dpo_afile_commit(w, e);
done:
    free(header);
    free(order);
    free(morder);
    return st;
}

/* ---- loading ------------------------------------------------------------------ */

/* The mapped file, shared by the tensors that are views of it. */
typedef struct {
    void *base;
    size_t len;
    int refcount;
} st_map;

static void map_release(void *ctx) {
    st_map *m = (st_map *)ctx;
    if (--m->refcount > 0) return;
    munmap(m->base, m->len);
    free(m);
}

typedef struct {
    const char *name; /* borrowed from the JSON */
    int kind;
    int ndim;
    int64_t shape[DPO_MAXDIM];
    uint64_t numel, begin, end;
} st_entry;

static int cmp_begin(const void *a, const void *b) {
    const st_entry *x = (const st_entry *)a, *y = (const st_entry *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}

/* Check one header entry against the data section size; fill *t. */
static int parse_entry(const char *path, const char *name, json_t *v, uint64_t dsize, st_entry *t,
                       dpo_error *e) {
    json_t *dt, *shape, *offs, *x;
    const char *dname;
    size_t i, nd;
    uint64_t numel = 1, need;
    json_int_t ob, oe;
    char sh[DPO_SHAPELEN];
    t->name = name;
    if (!json_is_object(v)) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' is described by %s, not an object", path, name,
                 json_kind(v));
        return -1;
    }
    dt = json_object_get(v, "dtype");
    if (!json_is_string(dt)) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' has %s", path, name,
                 dt ? "a \"dtype\" that is not a string" : "no \"dtype\"");
        return -1;
    }
    dname = json_string_value(dt);
    t->kind = kind_of(dname);
    if (t->kind < 0) {
        for (int k = 0; unsupported[k]; k++)
            if (strcmp(unsupported[k], dname) == 0) {
                dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' has unsupported dtype '%s'", path, name,
                         dname);
                return -1;
            }
        dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' has unknown dtype '%.40s'", path, name, dname);
        return -1;
    }
    shape = json_object_get(v, "shape");
    if (!json_is_array(shape)) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' has %s", path, name,
                 shape ? "a \"shape\" that is not an array" : "no \"shape\"");
        return -1;
    }
    nd = json_array_size(shape);
    if (nd > DPO_MAXDIM) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' has %zu dimensions (at most %d)", path, name,
                 nd, DPO_MAXDIM);
        return -1;
    }
    t->ndim = (int)nd;
    json_array_foreach(shape, i, x) {
        json_int_t s;
        if (!json_is_integer(x)) {
            dpo_fail(e, DPO_ERR_IO, 0,
                     "%s: tensor '%s' has size %zu of its shape %s, not an integer", path, name,
                     i + 1, json_kind(x));
            return -1;
        }
        s = json_integer_value(x);
        if (s < 0) {
            dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' has a negative size %lld in its shape",
                     path, name, (long long)s);
            return -1;
        }
        t->shape[i] = (int64_t)s;
        if (s > 0 && numel > UINT64_MAX / (uint64_t)s)
            numel = UINT64_MAX; /* saturate */
        else
            numel *= (uint64_t)s;
    }
    t->numel = numel;
    offs = json_object_get(v, "data_offsets");
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1))) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' has %s", path, name,
                 offs ? "\"data_offsets\" that are not a pair of integers [begin, end]"
                      : "no \"data_offsets\"");
        return -1;
    }
    ob = json_integer_value(json_array_get(offs, 0));
    oe = json_integer_value(json_array_get(offs, 1));
    if (ob < 0 || oe < 0) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' has negative data_offsets [%lld, %lld]", path,
                 name, (long long)ob, (long long)oe);
        return -1;
    }
    t->begin = (uint64_t)ob, t->end = (uint64_t)oe;
    if (t->begin > t->end) {
        dpo_fail(e, DPO_ERR_IO, 0,
                 "%s: tensor '%s' has data_offsets [%lld, %lld] whose begin is after its end", path,
                 name, (long long)ob, (long long)oe);
        return -1;
    }
    dpo_shape_str(t->shape, t->ndim, sh, sizeof sh);
    if (numel > UINT64_MAX / (uint64_t)kinds[t->kind].size) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: tensor '%s' has shape %s, too large to hold", path, name,
                 sh);
        return -1;
    }
    need = numel * (uint64_t)kinds[t->kind].size;
    if (t->end - t->begin != need) {
        dpo_fail(e, DPO_ERR_IO, 0,
                 "%s: tensor '%s' has data_offsets [%lld, %lld] but shape %s of %s needs %llu "
                 "bytes",
                 path, name, (long long)ob, (long long)oe, sh, dname, (unsigned long long)need);
        return -1;
    }
    if (t->end > dsize) {
        dpo_fail(e, DPO_ERR_IO, 0,
                 "%s: tensor '%s' has data_offsets [%lld, %lld] past the end of the %llu-byte "
                 "data section (file truncated?)",
                 path, name, (long long)ob, (long long)oe, (unsigned long long)dsize);
        return -1;
    }
    return 0;
}

/* Widen n elements of float kind k at src into d. */
static void widen(int k, const unsigned char *src, float *d, int64_t n) {
    switch (k) {
    case K_F32:
        if (host_is_le())
            memcpy(d, src, (size_t)n * 4);
        else
            for (int64_t i = 0; i < n; i++) d[i] = bits_f32(rd32(src + 4 * i));
        break;
    case K_F16:
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; i++) d[i] = dpo_f16_to_f32(rd16(src + 2 * i));
        break;
    case K_BF16:
#pragma omp parallel for if (n > 65536)
        for (int64_t i = 0; i < n; i++) d[i] = dpo_bf16_to_f32(rd16(src + 2 * i));
        break;
    case K_F64:
        for (int64_t i = 0; i < n; i++) {
            uint64_t u = rd64(src + 8 * i);
            double v;
            memcpy(&v, &u, 8);
            d[i] = f64_to_f32(v);
        }
        break;
    case K_F8_E4M3:
        for (int64_t i = 0; i < n; i++) d[i] = e4m3_to_f32(src[i]);
        break;
    default: /* K_F8_E5M2 */
        for (int64_t i = 0; i < n; i++) d[i] = e5m2_to_f32(src[i]);
        break;
    }
}

/* Convert n elements of kind k at src into t (a new contiguous tensor). */
static int convert(const char *path, const st_entry *en, const unsigned char *src, dpo_tensor *t,
                   dpo_error *e) {
    int64_t n = (int64_t)en->numel;
    if (kinds[en->kind].to == DPO_F32) {
        widen(en->kind, src, dpo_f32(t), n);
        return 0;
    }
    {
        int32_t *d = dpo_i32(t);
        for (int64_t i = 0; i < n; i++) {
            int64_t v;
            switch (en->kind) {
            case K_I32:
                v = (int32_t)rd32(src + 4 * i);
                break;
            case K_BOOL:
                v = src[i] != 0;
                break;
            case K_U8:
                v = src[i];
                break;
            case K_I8:
                v = (int8_t)src[i];
                break;
            case K_I16:
                v = (int16_t)rd16(src + 2 * i);
                break;
            case K_U16:
                v = rd16(src + 2 * i);
                break;
            case K_U32:
                v = rd32(src + 4 * i);
                break;
            case K_I64:
                v = (int64_t)rd64(src + 8 * i);
                break;
            default: { /* K_U64 */
                uint64_t u = rd64(src + 8 * i);
                if (u > INT32_MAX) {
                    dpo_fail(e, DPO_ERR_IO, 0,
                             "%s: tensor '%s' (U64) holds %llu at element %lld, outside the int32 "
                             "range",
                             path, en->name, (unsigned long long)u, (long long)i + 1);
                    return -1;
                }
                v = (int64_t)u;
            }
            }
            if (v < INT32_MIN || v > INT32_MAX) {
                dpo_fail(e, DPO_ERR_IO, 0,
                         "%s: tensor '%s' (%s) holds %lld at element %lld, outside the int32 range",
                         path, en->name, kinds[en->kind].name, (long long)v, (long long)i + 1);
                return -1;
            }
            d[i] = (int32_t)v;
        }
    }
    return 0;
}

/* Build the tensor of entry en over the data section at data. */
static dpo_tensor *make_tensor(const char *path, const st_entry *en, unsigned char *data, st_map *m,
                               dpo_error *e) {
    dpo_dtype to = kinds[en->kind].to;
    unsigned char *src = data + en->begin;
    dpo_tensor *t;
    dpo_error e2;
    if (en->numel == 0) {
        t = dpo_tensor_zeros(to, en->ndim, en->shape, &e2);
    } else if ((en->kind == K_F32 || en->kind == K_I32) && host_is_le() &&
               ((uintptr_t)src % 4) == 0) {
        m->refcount++;
        t = dpo_tensor_wrap(to, en->ndim, en->shape, src, map_release, m, &e2);
        if (!t) m->refcount--;
    } else {
        t = dpo_tensor_new(to, en->ndim, en->shape, &e2);
        if (t && convert(path, en, src, t, e) != 0) {
            dpo_tensor_release(t);
            return NULL;
        }
    }
    if (!t)
        return dpo_fail(e, e2.status == DPO_ERR_MEM ? DPO_ERR_MEM : DPO_ERR_IO, 0,
                        "%s: tensor '%s': %s", path, en->name, e2.msg);
    return t;
}

/* An open file: the mapping, the checked header, the entries by name. */
struct dpo_st_reader {
    char *path;
    st_map *m;           /* one reference */
    unsigned char *data; /* the data section */
    json_t *root;        /* owns the entries' names */
    json_t *meta;        /* "__metadata__" (in root), or NULL */
    st_entry *ents;      /* nent entries, sorted by name */
    dpo_st_info *info;   /* nent, the public face of ents */
    int nent;
};

void dpo_st_close(dpo_st_reader *r) {
    if (!r) return;
    if (r->m) map_release(r->m);
    json_decref(r->root);
    free(r->ents);
    free(r->info);
    free(r->path);
    free(r);
}

/* Check the header of the mapped file r->m in full; fill r. */
static int parse_header(dpo_st_reader *r, dpo_error *e) {
    const char *path = r->path;
    unsigned char *base = (unsigned char *)r->m->base;
    uint64_t size = r->m->len, hlen = rd64(base), dsize;
    json_error_t jerr;
    json_t *root, *v;
    const char *key;
    size_t nent = 0, k;

    if (hlen > size - 8) {
        dpo_fail(e, DPO_ERR_IO, 0,
                 "%s: header length %llu runs past the end of the file (%llu bytes after the "
                 "length)",
                 path, (unsigned long long)hlen, (unsigned long long)(size - 8));
        return -1;
    }
    if (hlen > DPO_ST_MAX_HEADER) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: header length %llu is over the limit of %d bytes", path,
                 (unsigned long long)hlen, DPO_ST_MAX_HEADER);
        return -1;
    }
    dsize = size - 8 - hlen;
    r->data = base + 8 + hlen;
    root = r->root = json_loadb((const char *)base + 8, (size_t)hlen,
                                JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: header is not valid JSON: %s (at byte %d of the header)",
                 path, jerr.text, jerr.position);
        return -1;
    }
    if (!json_is_object(root)) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: header is %s, not a JSON object", path, json_kind(root));
        return -1;
    }
    r->ents = (st_entry *)calloc(json_object_size(root) + 1, sizeof *r->ents);
    if (!r->ents) {
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", path);
        return -1;
    }
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            const char *mk;
            json_t *mv;
            if (!json_is_object(v)) {
                dpo_fail(e, DPO_ERR_IO, 0, "%s: \"__metadata__\" is %s, not an object", path,
                         json_kind(v));
                return -1;
            }
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    dpo_fail(e, DPO_ERR_IO, 0,
                             "%s: \"__metadata__\" value for '%s' is %s, not a string", path, mk,
                             json_kind(mv));
                    return -1;
                }
            }
            r->meta = v;
            continue;
        }
        if (parse_entry(path, key, v, dsize, &r->ents[nent], e) != 0) return -1;
        nent++;
    }
    if (nent > INT_MAX) {
        dpo_fail(e, DPO_ERR_IO, 0, "%s: too many tensors", path);
        return -1;
    }

    /* No two non-empty byte ranges may share a byte. */
    qsort(r->ents, nent, sizeof *r->ents, cmp_begin);
    {
        const st_entry *prev = NULL, *ents = r->ents;
        for (k = 0; k < nent; k++) {
            if (ents[k].begin == ents[k].end) continue;
            if (prev && ents[k].begin < prev->end) {
                dpo_fail(e, DPO_ERR_IO, 0,
                         "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap", path,
                         prev->name, (unsigned long long)prev->begin, (unsigned long long)prev->end,
                         ents[k].name, (unsigned long long)ents[k].begin,
                         (unsigned long long)ents[k].end);
                return -1;
            }
            prev = &ents[k];
        }
    }
    qsort(r->ents, nent, sizeof *r->ents, cmp_name);
    r->nent = (int)nent;
    r->info = (dpo_st_info *)calloc(nent + 1, sizeof *r->info);
    if (!r->info) {
        dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", path);
        return -1;
    }
    for (k = 0; k < nent; k++) {
        dpo_st_info *in = &r->info[k];
        const st_entry *en = &r->ents[k];
        in->name = en->name;
        in->dtype = kinds[en->kind].name;
        in->ndim = en->ndim;
        memcpy(in->shape, en->shape, sizeof in->shape);
        in->numel = (int64_t)en->numel; /* fits: numel * size <= the file's size */
        in->to = kinds[en->kind].to;
    }
    return 0;
}

/* Map path (privately, writable when views of it may be handed out) and check its header. */
static dpo_st_reader *open_file(const char *path, int writable, dpo_error *e) {
    struct stat sb;
    int fd;
    void *base;
    dpo_st_reader *r;
    if (!path || !*path) return dpo_fail(e, DPO_ERR_ARG, 1, "empty path");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return io_failp(e, path, errno);
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return io_failp(e, path, err);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return dpo_fail(e, DPO_ERR_IO, 0, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        if (sb.st_size == 0)
            return dpo_fail(e, DPO_ERR_IO, 0,
                            "%s: file is empty (a safetensors file starts with an 8-byte header "
                            "length)",
                            path);
        return dpo_fail(e, DPO_ERR_IO, 0,
                        "%s: file is %lld bytes, too short for the 8-byte header length", path,
                        (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return dpo_fail(e, DPO_ERR_IO, 0, "%s: file too large to map", path);
    }
    base =
        mmap(NULL, (size_t)sb.st_size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        close(fd);
        return io_failp(e, path, err);
    }
    close(fd);
    r = (dpo_st_reader *)calloc(1, sizeof *r);
    if (r) r->m = (st_map *)malloc(sizeof *r->m);
    if (r) r->path = dupstr(path);
    if (!r || !r->m || !r->path) {
        munmap(base, (size_t)sb.st_size);
        if (r) free(r->m), r->m = NULL;
        dpo_st_close(r);
        return dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", path);
    }
    r->m->base = base, r->m->len = (size_t)sb.st_size, r->m->refcount = 1;
    if (parse_header(r, e) != 0) {
        dpo_st_close(r);
        return NULL;
    }
    return r;
}

dpo_st_reader *dpo_st_open(const char *path, dpo_error *e) {
    return open_file(path, 0, e);
}

int dpo_st_count(const dpo_st_reader *r) {
    return r ? r->nent : 0;
}

const dpo_st_info *dpo_st_info_at(const dpo_st_reader *r, int i) {
    return r && i >= 0 && i < r->nent ? &r->info[i] : NULL;
}

int dpo_st_index(const dpo_st_reader *r, const char *name) {
    int lo = 0, hi = r && name ? r->nent - 1 : -1;
    while (lo <= hi) { /* the entries are sorted by name */
        int mid = lo + (hi - lo) / 2, c = strcmp(r->ents[mid].name, name);
        if (c == 0) return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

const char *dpo_st_path(const dpo_st_reader *r) {
    return r ? r->path : NULL;
}

/*
** Elements widened between two returns of the file's pages: the mapping holds
** at most this many elements' bytes (8 MB of BF16) in memory while a tensor
** is read, whatever its size.
*/
#define READ_CHUNK (4 << 20)

/* Give back the pages of [a, b) of the read-only mapping: unmodified pages
   of a file, read again from it if they are touched later. */
static void drop_pages(const unsigned char *a, const unsigned char *b) {
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t lo;
    if (pg <= 0 || b <= a) return;
    lo = (uintptr_t)a & ~(uintptr_t)(pg - 1);
    (void)madvise((void *)lo, (size_t)((uintptr_t)b - lo), MADV_DONTNEED);
}

dpo_status dpo_st_read(dpo_st_reader *r, int i, dpo_tensor *dst, dpo_error *e) {
    const st_entry *en;
    char want[DPO_SHAPELEN], got[DPO_SHAPELEN];
    if (!r || i < 0 || i >= r->nent) {
        dpo_fail(e, DPO_ERR_RANGE, 2, "no tensor %d in %s", i, r ? r->path : "a closed file");
        return DPO_ERR_RANGE;
    }
    en = &r->ents[i];
    if (!dst) return fail_arg(e, 3, "missing destination tensor");
    dpo_shape_str(en->shape, en->ndim, want, sizeof want);
    dpo_tensor_shape_str(dst, got, sizeof got);
    if (dst->dtype != kinds[en->kind].to) {
        dpo_fail(e, DPO_ERR_TYPE, 3, "%s: tensor '%s' (%s) reads as %s, the destination is %s",
                 r->path, en->name, kinds[en->kind].name, dpo_dtype_name(kinds[en->kind].to),
                 dpo_dtype_name(dst->dtype));
        return DPO_ERR_TYPE;
    }
    if (dst->ndim != en->ndim ||
        memcmp(dst->shape, en->shape, sizeof(int64_t) * (size_t)en->ndim)) {
        dpo_fail(e, DPO_ERR_SHAPE, 3, "%s: tensor '%s' has shape %s, the destination %s", r->path,
                 en->name, want, got);
        return DPO_ERR_SHAPE;
    }
    if (!dpo_tensor_is_contiguous(dst)) return fail_arg(e, 3, "destination is not contiguous");
    if (en->numel == 0) return DPO_OK;
    if (dst->dtype != DPO_F32) {
        if (convert(r->path, en, r->data + en->begin, dst, e) != 0) return DPO_ERR_IO;
        drop_pages(r->data + en->begin, r->data + en->end);
        return DPO_OK;
    }
    {
        int64_t n = (int64_t)en->numel, size = kinds[en->kind].size;
        for (int64_t i0 = 0; i0 < n; i0 += READ_CHUNK) {
            int64_t m = n - i0 < READ_CHUNK ? n - i0 : READ_CHUNK;
            const unsigned char *src = r->data + en->begin + i0 * size;
            widen(en->kind, src, dpo_f32(dst) + i0, m);
            drop_pages(src, src + m * size);
        }
    }
    return DPO_OK;
}

dpo_st_file *dpo_st_load(const char *path, dpo_error *e) {
    dpo_st_reader *r = open_file(path, 1, e);
    dpo_st_file *f;
    int nent;
    if (!r) return NULL;
    nent = r->nent;
    f = (dpo_st_file *)calloc(1, sizeof *f);
    if (!f) goto oom;
    f->names = (char **)calloc((size_t)nent + 1, sizeof *f->names);
    f->tensors = (dpo_tensor **)calloc((size_t)nent + 1, sizeof *f->tensors);
    f->dtypes = (const char **)calloc((size_t)nent + 1, sizeof *f->dtypes);
    if (!f->names || !f->tensors || !f->dtypes) goto oom;
    f->ntensors = nent;
    for (int k = 0; k < nent; k++) {
        f->dtypes[k] = kinds[r->ents[k].kind].name;
        if (!(f->names[k] = dupstr(r->ents[k].name))) goto oom;
        f->tensors[k] = make_tensor(path, &r->ents[k], r->data, r->m, e);
        if (!f->tensors[k]) goto fail;
    }
    if (r->meta) {
        size_t nm = json_object_size(r->meta);
        const char *mk;
        json_t *mv;
        f->meta_keys = (char **)calloc(nm + 1, sizeof *f->meta_keys);
        f->meta_values = (char **)calloc(nm + 1, sizeof *f->meta_values);
        if (!f->meta_keys || !f->meta_values) goto oom;
        json_object_foreach(r->meta, mk, mv) {
            int i = f->nmeta;
            f->meta_keys[i] = dupstr(mk);
            f->meta_values[i] = dupstr(json_string_value(mv));
            f->nmeta++;
            if (!f->meta_keys[i] || !f->meta_values[i]) goto oom;
        }
        /* sort pairs by key (insertion sort: metadata is small) */
        for (int i = 1; i < f->nmeta; i++)
            for (int j = i; j > 0 && strcmp(f->meta_keys[j - 1], f->meta_keys[j]) > 0; j--) {
                char *a = f->meta_keys[j], *b = f->meta_values[j];
                f->meta_keys[j] = f->meta_keys[j - 1], f->meta_values[j] = f->meta_values[j - 1];
                f->meta_keys[j - 1] = a, f->meta_values[j - 1] = b;
            }
    }
    dpo_st_close(r); /* the views that were made keep the mapping */
    return f;
oom:
    dpo_fail(e, DPO_ERR_MEM, 0, "%s: out of memory", path);
fail:
    dpo_st_free(f);
    dpo_st_close(r);
    return NULL;
}
