/*
** test_safetensors.c: safetensors files at the engine level: round trips
** (values, dtypes, shapes, metadata, the exact bytes of the header), the
** conversions of every dtype the reader accepts (expected values written from
** the definitions of the formats), malformed files each refused with its own
** message, and the atomic writer (failures leave the old file and no
** temporary file behind, including a write that fails half-way).
*/
#include "check.h"
#include "tmpdir.h"
#include "data/safetensors.h"

#include <sys/resource.h>
#include <sys/stat.h>

#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static dpo_error e;

static size_t read_bytes(const char *path, unsigned char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    size_t n;
    if (!f) return 0;
    n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* A file of: the 8-byte length of header, header, then ndata bytes of data. */
static void write_st(const char *path, const char *header, const void *data, size_t ndata) {
    size_t h = strlen(header);
    unsigned char *buf = (unsigned char *)malloc(8 + h + ndata + 1);
    for (int b = 0; b < 8; b++) buf[b] = (unsigned char)((uint64_t)h >> (8 * b));
    memcpy(buf + 8, header, h);
    if (ndata) memcpy(buf + 8 + h, data, ndata);
    write_bytes(path, buf, 8 + h + ndata);
    free(buf);
}

/* Number of entries of dir whose names start with '.' (temporary files). */
static int hidden_files(void) {
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    if (!d) return -1;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] == '.' && strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* Load path, expecting failure with a message containing sub (and the path). */
static void load_fails(const char *path, const char *sub) {
    dpo_st_file *f = dpo_st_load(path, &e);
    CHECK(f == NULL);
    if (f) {
        dpo_st_free(f);
        fprintf(stderr, "  (expected \"%s\" for %s)\n", sub, path);
        return;
    }
    CHECK(e.status == DPO_ERR_IO || e.status == DPO_ERR_MEM);
    CHECK_STR(e.msg, path);
    CHECK_STR(e.msg, sub);
}

static void load_fails_hdr(const char *header, size_t ndata, const char *sub) {
    unsigned char zeros[256] = {0};
    write_st(in_dir("bad.safetensors"), header, zeros, ndata);
    load_fails(in_dir("bad.safetensors"), sub);
}

/* ---- round trip ----------------------------------------------------------------- */

static void test_round_trip(void) {
    int64_t s23[2] = {2, 3}, s2[1] = {2}, s03[2] = {0, 3};
    dpo_tensor *a = dpo_tensor_new(DPO_F32, 2, s23, &e);
    dpo_tensor *ids = dpo_tensor_new(DPO_I32, 1, s2, &e);
    dpo_tensor *sc = dpo_tensor_scalar(DPO_F32, -2.5, &e);
    dpo_tensor *em = dpo_tensor_new(DPO_F32, 2, s03, &e);
    dpo_tensor *at = dpo_tensor_transpose(a, 0, 1, &e); /* 3x2, strided */
    const char *names[5] = {"w", "ids", "scalar", "empty", "w.T"};
    dpo_tensor *ts[5];
    const char *mk[2] = {"format", "note"}, *mv[2] = {"pt", "caf\xc3\xa9 \"quoted\""};
    const char *path = in_dir("rt.safetensors");
    dpo_st_file *f;
    unsigned char buf[4096];
    size_t n;
    uint64_t hlen = 0;
    for (int i = 0; i < 6; i++) dpo_f32(a)[i] = (float)i + 0.25f;
    dpo_i32(ids)[0] = -7, dpo_i32(ids)[1] = 2147483647;
    ts[0] = a, ts[1] = ids, ts[2] = sc, ts[3] = em, ts[4] = at;

    CHECK(dpo_st_save(path, 5, names, ts, 2, mk, mv, &e) == DPO_OK);
    CHECK(hidden_files() == 0);

    /* the bytes: header length a multiple of 8, padded with spaces, names sorted */
    n = read_bytes(path, buf, sizeof buf);
    for (int b = 0; b < 8; b++) hlen |= (uint64_t)buf[b] << (8 * b);
    CHECK(hlen % 8 == 0 && 8 + hlen <= n);
    {
        const char *want =
            "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\xc3\xa9 \\\"quoted\\\"\"},"
            "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
            "\"ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[8,12]},"
            "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[12,36]},"
            "\"w.T\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[36,60]}}";
        size_t wl = strlen(want);
        int pad_ok = 1;
        CHECK(hlen == ((wl + 7) & ~(size_t)7));
        CHECK(memcmp(buf + 8, want, wl) == 0);
        for (size_t k = wl; k < hlen; k++) pad_ok &= buf[8 + k] == ' ';
        CHECK(pad_ok);
        CHECK(n == 8 + hlen + 60);
    }
    {
        /* w.T packed: rows of the transpose, little-endian */
        const float want[6] = {0.25f, 3.25f, 1.25f, 4.25f, 2.25f, 5.25f};
        int ok = 1;
        for (int i = 0; i < 6; i++) {
            uint32_t u = 0;
            float v;
            for (int b = 0; b < 4; b++) u |= (uint32_t)buf[8 + hlen + 36 + 4 * i + b] << (8 * b);
            memcpy(&v, &u, 4);
            ok &= v == want[i];
        }
        CHECK(ok);
    }

    f = dpo_st_load(path, &e);
    CHECK(f != NULL);
    if (f) {
        dpo_tensor *w = dpo_st_find(f, "w"), *wt = dpo_st_find(f, "w.T");
        dpo_tensor *li = dpo_st_find(f, "ids"), *ls = dpo_st_find(f, "scalar");
        dpo_tensor *le = dpo_st_find(f, "empty");
        CHECK(f->ntensors == 5);
        CHECK(strcmp(f->names[0], "empty") == 0 && strcmp(f->names[4], "w.T") == 0);
        CHECK(strcmp(f->dtypes[1], "I32") == 0);
        CHECK(f->nmeta == 2 && strcmp(f->meta_keys[1], "note") == 0 &&
              strcmp(f->meta_values[1], mv[1]) == 0);
        CHECK(w && dpo_tensor_equal(w, a));
        CHECK(wt && dpo_tensor_equal(wt, at) && dpo_tensor_is_contiguous(wt));
        CHECK(li && li->dtype == DPO_I32 && dpo_tensor_equal(li, ids));
        CHECK(ls && ls->ndim == 0 && dpo_tensor_get(ls, 0) == -2.5);
        CHECK(le && le->ndim == 2 && le->shape[0] == 0 && le->shape[1] == 3);
        /* aligned F32 data is a view of the mapping, which outlives the file record */
        CHECK(w && w->storage->release != NULL);
        if (w) {
            dpo_tensor_retain(w);
            dpo_st_free(f);
            f = NULL;
            dpo_f32(w)[0] = 100; /* private mapping: memory only */
            CHECK(dpo_tensor_get(w, 5) == 5.25);
            dpo_tensor_release(w);
        }
        dpo_st_free(f);
    }
    f = dpo_st_load(path, &e); /* the file did not change */
    CHECK(f && dpo_tensor_get(dpo_st_find(f, "w"), 0) == 0.25);
    dpo_st_free(f);

    /* saving over an existing file replaces it; no metadata writes none */
    CHECK(dpo_st_save(path, 1, names + 1, ts + 1, 0, NULL, NULL, &e) == DPO_OK);
    f = dpo_st_load(path, &e);
    CHECK(f && f->ntensors == 1 && f->nmeta == 0 && dpo_st_find(f, "w") == NULL);
    dpo_st_free(f);
    n = read_bytes(path, buf, sizeof buf);
    CHECK(n > 20 && memcmp(buf + 8, "{\"ids\":", 7) == 0);

    /* nothing at all */
    CHECK(dpo_st_save(path, 0, NULL, NULL, 0, NULL, NULL, &e) == DPO_OK);
    n = read_bytes(path, buf, sizeof buf);
    CHECK(n == 16 && buf[0] == 8 && memcmp(buf + 8, "{}      ", 8) == 0);
    f = dpo_st_load(path, &e);
    CHECK(f && f->ntensors == 0);
    dpo_st_free(f);

    dpo_tensor_release(a), dpo_tensor_release(ids), dpo_tensor_release(sc);
    dpo_tensor_release(em), dpo_tensor_release(at);
}

/* ---- conversions -------------------------------------------------------------------- */

static void put16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8);
}

static void put64(unsigned char *p, uint64_t v) {
    for (int b = 0; b < 8; b++) p[b] = (unsigned char)(v >> (8 * b));
}

static int same_float(double got, double want) {
    if (isnan(want)) return isnan(got);
    return got == want && signbit(got) == signbit(want);
}

static void check_floats(dpo_st_file *f, const char *name, const double *want, int n) {
    dpo_tensor *t = dpo_st_find(f, name);
    int ok = t && t->dtype == DPO_F32 && dpo_tensor_numel(t) == n;
    for (int i = 0; ok && i < n; i++) {
        if (!same_float(dpo_tensor_get(t, i), want[i])) {
            fprintf(stderr, "%s[%d] = %.9g, expected %.9g\n", name, i, dpo_tensor_get(t, i),
                    want[i]);
            ok = 0;
        }
    }
    CHECK(ok);
}

static void check_ints(dpo_st_file *f, const char *name, const double *want, int n) {
    dpo_tensor *t = dpo_st_find(f, name);
    int ok = t && t->dtype == DPO_I32 && dpo_tensor_numel(t) == n;
    for (int i = 0; ok && i < n; i++) ok = dpo_tensor_get(t, i) == want[i];
    CHECK(ok);
}

static void test_conversions(void) {
    /* F16: by definition (-1)^s 2^(e-15) (1 + m/1024), subnormals 2^-14 m/1024 */
    const uint16_t h[10] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff,
                            0x0400, 0x7c00, 0xfc00, 0x7e00, 0x8000};
    const double hw[10] = {
        1,        -2,        65504, ldexp(1, -24), 1023 * ldexp(1, -24), ldexp(1, -14),
        INFINITY, -INFINITY, NAN,   -0.0};
    /* BF16: the top 16 bits of a float32 */
    const uint16_t bf[7] = {0x3f80, 0xc000, 0x7f80, 0xff80, 0x7fc0, 0x0001, 0x4049};
    const double bw[7] = {1, -2, INFINITY, -INFINITY, NAN, ldexp(1, -133), 3.140625};
    const double f64[4] = {0.1, -1e300, 1e-50, 3.0};
    const double f64w[4] = {(double)0.1f, -INFINITY, 0.0, 3.0};
    /* FP8: E4M3 bias 7, max 448, S.1111.111 nan; E5M2 the top byte of a half */
    const unsigned char e4[5] = {0x38, 0x7e, 0x7f, 0x01, 0xb8};
    const double e4w[5] = {1, 448, NAN, ldexp(1, -9), -1};
    const unsigned char e5[4] = {0x3c, 0x7c, 0x01, 0xc0};
    const double e5w[4] = {1, INFINITY, ldexp(1, -16), -2};
    const int64_t i64[4] = {1, -1, 2147483647, -2147483647 - 1};
    unsigned char data[256];
    size_t off = 0;
    char header[2048];
    dpo_st_file *f;
    const double i64w[4] = {1, -1, 2147483647, -2147483648.0};
    const double u8w[3] = {0, 200, 255}, i8w[3] = {-128, -1, 127}, bw8[3] = {0, 1, 1};
    const double i16w[2] = {-32768, 32767}, u16w[2] = {0, 65535}, u32w[2] = {7, 2147483647};

    for (int i = 0; i < 10; i++) put16(data + off + 2 * i, h[i]);
    off += 20; /* F16 [0,20) */
    for (int i = 0; i < 7; i++) put16(data + off + 2 * i, bf[i]);
    off += 14; /* BF16 [20,34) */
    off += 6;  /* gap, to 40 */
    for (int i = 0; i < 4; i++) {
        uint64_t u;
        memcpy(&u, &f64[i], 8);
        put64(data + off + 8 * i, u);
    }
    off += 32; /* F64 [40,72) */
    for (int i = 0; i < 4; i++) put64(data + off + 8 * i, (uint64_t)i64[i]);
    off += 32;                                                          /* I64 [72,104) */
    memcpy(data + off, e4, 5), off += 5;                                /* F8_E4M3 [104,109) */
    memcpy(data + off, e5, 4), off += 4;                                /* F8_E5M2 [109,113) */
    data[off++] = 0, data[off++] = 200, data[off++] = 255;              /* U8 [113,116) */
    data[off++] = 0x80, data[off++] = 0xff, data[off++] = 127;          /* I8 [116,119) */
    data[off++] = 0, data[off++] = 1, data[off++] = 2;                  /* BOOL [119,122) */
    put16(data + off, 0x8000), put16(data + off + 2, 0x7fff), off += 4; /* I16 [122,126) */
    put16(data + off, 0), put16(data + off + 2, 0xffff), off += 4;      /* U16 [126,130) */
    data[off++] = 7, data[off++] = 0, data[off++] = 0, data[off++] = 0; /* U32 [130,138) */
    data[off++] = 0xff, data[off++] = 0xff, data[off++] = 0xff, data[off++] = 0x7f;
    /* misaligned F32 [138,146): 1.5, -0.5 */
    data[off++] = 0, data[off++] = 0, data[off++] = 0xc0, data[off++] = 0x3f;
    data[off++] = 0, data[off++] = 0, data[off++] = 0x00, data[off++] = 0xbf;
    snprintf(header, sizeof header,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[10],\"data_offsets\":[0,20]},"
             "\"bf\":{\"dtype\":\"BF16\",\"shape\":[7],\"data_offsets\":[20,34]},"
             "\"d\":{\"dtype\":\"F64\",\"shape\":[2,2],\"data_offsets\":[40,72]},"
             "\"l\":{\"dtype\":\"I64\",\"shape\":[4],\"data_offsets\":[72,104]},"
             "\"e4\":{\"dtype\":\"F8_E4M3\",\"shape\":[5],\"data_offsets\":[104,109]},"
             "\"e5\":{\"dtype\":\"F8_E5M2\",\"shape\":[4],\"data_offsets\":[109,113]},"
             "\"u8\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[113,116]},"
             "\"i8\":{\"dtype\":\"I8\",\"shape\":[3],\"data_offsets\":[116,119]},"
             "\"b\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[119,122]},"
             "\"i16\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[122,126]},"
             "\"u16\":{\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[126,130]},"
             "\"u32\":{\"dtype\":\"U32\",\"shape\":[2],\"data_offsets\":[130,138]},"
             "\"mis\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[138,146],\"extra\":1}}");
    /* pad to a multiple of 8, so that the data section is aligned and "mis" is not */
    while (strlen(header) % 8) strcat(header, " ");
    write_st(in_dir("conv.safetensors"), header, data, off);
    f = dpo_st_load(in_dir("conv.safetensors"), &e);
    CHECK(f != NULL);
    if (!f) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    check_floats(f, "h", hw, 10);
    check_floats(f, "bf", bw, 7);
    check_floats(f, "d", f64w, 4);
    CHECK(dpo_st_find(f, "d")->ndim == 2);
    check_ints(f, "l", i64w, 4);
    check_floats(f, "e4", e4w, 5);
    check_floats(f, "e5", e5w, 4);
    check_ints(f, "u8", u8w, 3);
    check_ints(f, "i8", i8w, 3);
    check_ints(f, "b", bw8, 3);
    check_ints(f, "i16", i16w, 2);
    check_ints(f, "u16", u16w, 2);
    check_ints(f, "u32", u32w, 2);
    {
        const double mw[2] = {1.5, -0.5};
        check_floats(f, "mis", mw, 2);
        CHECK(dpo_st_find(f, "mis")->storage->release == NULL); /* copied, not a view */
    }
    CHECK(strcmp(f->dtypes[0], "BOOL") == 0); /* "b" sorts first */
    dpo_st_free(f);

    /* F64 rounding at the edge of float32: FLT_MAX stays, half an ulp above overflows */
    {
        const double v[3] = {3.4028234663852886e38, 0x1.ffffffp127, 0x1.fffffefffffffp127};
        const double w[3] = {3.4028234663852886e38, INFINITY, 3.4028234663852886e38};
        for (int i = 0; i < 3; i++) {
            uint64_t u;
            memcpy(&u, &v[i], 8);
            put64(data + 8 * i, u);
        }
        write_st(in_dir("f64.safetensors"),
                 "{\"x\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[0,24]}}", data, 24);
        f = dpo_st_load(in_dir("f64.safetensors"), &e);
        CHECK(f != NULL);
        if (f) check_floats(f, "x", w, 3);
        dpo_st_free(f);
    }

    /* wide integers out of the int32 range name the tensor and the element */
    put64(data, 5), put64(data + 8, (uint64_t)1 << 31);
    write_st(in_dir("i64.safetensors"),
             "{\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", data, 16);
    load_fails(in_dir("i64.safetensors"),
               "tensor 'ids' (I64) holds 2147483648 at element 2, outside the int32 range");
    put64(data, (uint64_t)-2147483649LL);
    write_st(in_dir("i64.safetensors"),
             "{\"ids\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", data, 8);
    load_fails(in_dir("i64.safetensors"), "holds -2147483649 at element 1");
    put64(data, UINT64_MAX);
    write_st(in_dir("u64.safetensors"),
             "{\"u\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[0,8]}}", data, 8);
    load_fails(in_dir("u64.safetensors"), "tensor 'u' (U64) holds 18446744073709551615");
    data[0] = 0xff, data[1] = 0xff, data[2] = 0xff, data[3] = 0xff;
    write_st(in_dir("u32.safetensors"),
             "{\"u\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[0,4]}}", data, 4);
    load_fails(in_dir("u32.safetensors"), "holds 4294967295");
}

/* ---- malformed files ---------------------------------------------------------------- */

static void test_malformed(void) {
    unsigned char b[16];
    write_bytes(in_dir("empty.safetensors"), "", 0);
    load_fails(in_dir("empty.safetensors"), "file is empty");
    write_bytes(in_dir("three.safetensors"), "abc", 3);
    load_fails(in_dir("three.safetensors"), "file is 3 bytes, too short");
    load_fails(in_dir("missing.safetensors"), "No such file or directory");
    load_fails(dir, "not a regular file");

    put64(b, 100);
    memcpy(b + 8, "{}", 2);
    write_bytes(in_dir("past.safetensors"), b, 10);
    load_fails(in_dir("past.safetensors"), "header length 100 runs past the end of the file");
    put64(b, (uint64_t)1 << 63);
    write_bytes(in_dir("huge.safetensors"), b, 10);
    load_fails(in_dir("huge.safetensors"), "header length 9223372036854775808 runs past");
    put64(b, UINT64_MAX);
    write_bytes(in_dir("huge.safetensors"), b, 10);
    load_fails(in_dir("huge.safetensors"), "header length 18446744073709551615 runs past");

    load_fails_hdr("{\"a\":", 0, "header is not valid JSON");
    load_fails_hdr("", 0, "header is not valid JSON");
    load_fails_hdr("{\"a\":{}} x", 0, "header is not valid JSON");
    {
        /* a NUL byte inside the header */
        unsigned char z[16];
        put64(z, 4);
        memcpy(z + 8, "{\0}", 4);
        write_bytes(in_dir("nul.safetensors"), z, 12);
        load_fails(in_dir("nul.safetensors"), "header is not valid JSON");
    }
    load_fails_hdr("{\"a\\u0000b\":1}", 0, "header is not valid JSON");
    load_fails_hdr("{\"\xff\":1}", 0, "header is not valid JSON");
    load_fails_hdr("[1, 2]", 0, "header is an array, not a JSON object");
    load_fails_hdr("42", 0, "header is an integer, not a JSON object");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                   8, "duplicate object key");
    load_fails_hdr("{\"a\":[1]}", 0, "tensor 'a' is described by an array, not an object");
    load_fails_hdr("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "tensor 'a' has no \"dtype\"");
    load_fails_hdr("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "tensor 'a' has a \"dtype\" that is not a string");
    load_fails_hdr("{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "tensor 'a' has unknown dtype 'F33'");
    load_fails_hdr("{\"c\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                   "tensor 'c' has unsupported dtype 'C64'");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
                   "tensor 'a' has no \"shape\"");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,12]}}", 12,
                   "tensor 'a' has a \"shape\" that is not an array");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", 4,
                   "tensor 'a' has a negative size -1 in its shape");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                   "tensor 'a' has size 1 of its shape a real number, not an integer");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                   "\"data_offsets\":[0,4]}}",
                   4, "tensor 'a' has 9 dimensions (at most 8)");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                   "\"data_offsets\":[0,4]}}",
                   4, "tensor 'a' has shape 4294967296x4294967296x4294967296, too large");
    /* empty, but its strides would overflow: refused, not computed */
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,1099511627776,1099511627776],"
                   "\"data_offsets\":[0,0]}}",
                   0, "tensor 'a': tensor too large");
    load_fails_hdr("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                   "\"data_offsets\":[0,4]}}",
                   4, "too large");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
                   "\"data_offsets\":[0,4]}}",
                   4, "header is not valid JSON");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
                   "tensor 'a' has no \"data_offsets\"");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
                   "\"data_offsets\" that are not a pair of integers");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
                   "negative data_offsets [-4, 0]");
    load_fails_hdr("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,12]}}", 24,
                   "tensor 'w' has data_offsets [0, 12] but shape 2x3 of F32 needs 24 bytes");
    load_fails_hdr("{\"s\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,4]}}", 4,
                   "shape scalar of BF16 needs 2 bytes");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
                   "data_offsets [4, 0] whose begin is after its end");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}", 8,
                   "tensor 'a' has data_offsets [16, 24] past the end of the 8-byte data section");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]}}", 12,
                   "past the end of the 12-byte data section");
    load_fails_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                   24, "tensors 'a' [0, 16] and 'b' [8, 24] overlap");
    load_fails_hdr("{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                   16, "tensors 'a' [0, 16] and 'b' [4, 12] overlap");
    load_fails_hdr("{\"__metadata__\":[1]}", 0, "\"__metadata__\" is an array, not an object");
    load_fails_hdr("{\"__metadata__\":{\"k\":\"v\",\"n\":3}}", 0,
                   "\"__metadata__\" value for 'n' is an integer, not a string");

    /* accepted: gaps, trailing bytes, empty ranges inside others, unknown keys, no tensors */
    {
        dpo_st_file *f;
        unsigned char zeros[64] = {0};
        write_st(in_dir("ok.safetensors"),
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16],\"x\":[]},"
                 "\"e\":{\"dtype\":\"I32\",\"shape\":[0],\"data_offsets\":[12,12]},"
                 "\"__metadata__\":{}}   ",
                 zeros, 32);
        f = dpo_st_load(in_dir("ok.safetensors"), &e);
        CHECK(f && f->ntensors == 2 && f->nmeta == 0);
        if (!f) fprintf(stderr, "  %s\n", e.msg);
        dpo_st_free(f);
    }
}

/* ---- the writer's failures ------------------------------------------------------------- */

static void test_save_errors(void) {
    int64_t s2[1] = {2}, big[1] = {4096};
    dpo_tensor *t = dpo_tensor_zeros(DPO_F32, 1, s2, &e);
    dpo_tensor *bt = dpo_tensor_zeros(DPO_F32, 1, big, &e);
    const char *nm[2] = {"a", "b"}, *dup[2] = {"a", "a"}, *meta_name[1] = {"__metadata__"};
    const char *empty[1] = {""}, *badutf[1] = {"\xff"};
    dpo_tensor *ts[2] = {t, t};
    char old[256];
    unsigned char before[256], after[256];
    size_t nb, na;
    dpo_st_file *f;

    snprintf(old, sizeof old, "%s/old.safetensors", dir);
    CHECK(dpo_st_save(in_dir("no/such/dir/x.safetensors"), 1, nm, ts, 0, NULL, NULL, &e) ==
          DPO_ERR_IO);
    CHECK_STR(e.msg, "no/such/dir/x.safetensors: No such file or directory");
    write_bytes(in_dir("plain"), "x", 1);
    CHECK(dpo_st_save(in_dir("plain/x.safetensors"), 1, nm, ts, 0, NULL, NULL, &e) == DPO_ERR_IO);
    CHECK_STR(e.msg, "plain/x.safetensors: Not a directory");
    /* the target is a directory: the rename fails after everything was written */
    mkdir(in_dir("adir"), 0777);
    CHECK(dpo_st_save(in_dir("adir"), 1, nm, ts, 0, NULL, NULL, &e) == DPO_ERR_IO);
    CHECK_STR(e.msg, "adir: Is a directory");
    CHECK(hidden_files() == 0);
    CHECK(dpo_st_save(in_dir("adir/"), 1, nm, ts, 0, NULL, NULL, &e) == DPO_ERR_IO);
    CHECK_STR(e.msg, "not a file name");

    CHECK(dpo_st_save(old, 2, dup, ts, 0, NULL, NULL, &e) == DPO_ERR_ARG && e.arg == 2);
    CHECK_STR(e.msg, "duplicate tensor name 'a'");
    CHECK(dpo_st_save(old, 1, empty, ts, 0, NULL, NULL, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "must not be empty");
    CHECK(dpo_st_save(old, 1, meta_name, ts, 0, NULL, NULL, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "reserved");
    CHECK(dpo_st_save(old, 1, badutf, ts, 0, NULL, NULL, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "not valid UTF-8");
    CHECK(dpo_st_save(old, 1, nm, ts, 2, dup, nm, &e) == DPO_ERR_ARG && e.arg == 5);
    CHECK_STR(e.msg, "duplicate metadata key 'a'");
    CHECK(dpo_st_save(old, 1, nm, ts, 1, nm, badutf, &e) == DPO_ERR_ARG && e.arg == 6);
    CHECK(dpo_st_save("", 1, nm, ts, 0, NULL, NULL, &e) == DPO_ERR_ARG && e.arg == 1);
    CHECK(access(old, F_OK) != 0); /* misuse wrote nothing */

    /* a write that fails half-way (the file size limit) leaves the old file as it was */
    CHECK(dpo_st_save(old, 2, nm, ts, 0, NULL, NULL, &e) == DPO_OK);
    nb = read_bytes(old, before, sizeof before);
    {
        struct rlimit rl, lim;
        void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
        dpo_tensor *bts[1] = {bt};
        dpo_status st;
        getrlimit(RLIMIT_FSIZE, &rl);
        lim = rl;
        lim.rlim_cur = 4096;
        setrlimit(RLIMIT_FSIZE, &lim);
        st = dpo_st_save(old, 1, nm, bts, 0, NULL, NULL, &e);
        setrlimit(RLIMIT_FSIZE, &rl);
        signal(SIGXFSZ, prev);
        CHECK(st == DPO_ERR_IO);
        CHECK_STR(e.msg, "old.safetensors: File too large");
    }
    na = read_bytes(old, after, sizeof after);
    CHECK(na == nb && memcmp(before, after, nb) == 0);
    CHECK(hidden_files() == 0);
    f = dpo_st_load(old, &e);
    CHECK(f && f->ntensors == 2);
    dpo_st_free(f);

    /* a stale temporary file of our pid is replaced, then gone */
    {
        char stale[300];
        snprintf(stale, sizeof stale, "%s/.old.safetensors.tmp.%ld", dir, (long)getpid());
        write_bytes(stale, "junk", 4);
        CHECK(dpo_st_save(old, 1, nm, ts, 0, NULL, NULL, &e) == DPO_OK);
        CHECK(hidden_files() == 0);
    }
    dpo_tensor_release(t);
    dpo_tensor_release(bt);
}

/* ---- narrowing to BF16 and F16 ------------------------------------------------------ */

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int is_nan16(uint16_t v, int bf16) {
    return bf16 ? (v & 0x7f80) == 0x7f80 && (v & 0x7f) : (v & 0x7c00) == 0x7c00 && (v & 0x3ff);
}

/*
** Expected bits written from the formats' definitions: bfloat16 keeps float32's
** sign, 8 exponent bits and top 7 mantissa bits; half has 5 exponent bits (bias
** 15) and 10 mantissa bits, subnormals multiples of 2^-24. Ties go to the even
** neighbour (the one whose last bit is 0).
*/
static void test_narrowing(void) {
    static const struct {
        uint32_t in;
        uint16_t bf, h;
    } cases[] = {
        {0x00000000, 0x0000, 0x0000}, /* +0 */
        {0x80000000, 0x8000, 0x8000}, /* -0 */
        {0x3f800000, 0x3f80, 0x3c00}, /* 1 */
        {0xc0000000, 0xc000, 0xc000}, /* -2 */
        /* 1 + 2^-8: the BF16 tie between 1 (even) and 1 + 2^-7; exact in half (0x3c04) */
        {0x3f808000, 0x3f80, 0x3c04},
        /* 1 + 3 * 2^-8: tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even) */
        {0x3f818000, 0x3f82, 0x3c0c},
        {0x3f808001, 0x3f81, 0x3c04}, /* just above the tie: up */
        {0x3f807fff, 0x3f80, 0x3c04}, /* just below: down */
        /* 1 + 2^-11: the half tie between 1 (even) and 1 + 2^-10 */
        {0x3f801000, 0x3f80, 0x3c00},
        /* 1 + 3 * 2^-11: tie between 1 + 2^-10 (odd) and 1 + 2^-9 (even) */
        {0x3f803000, 0x3f80, 0x3c02},
        {0x3f801001, 0x3f80, 0x3c01},
        /* float32's largest: BF16 rounds up to infinity, half overflows */
        {0x7f7fffff, 0x7f80, 0x7c00},
        {0x7f7f7fff, 0x7f7f, 0x7c00}, /* just under BF16's tie: its largest finite */
        {0x477fe000, 0x4780, 0x7bff}, /* 65504: half's largest finite; BF16 rounds up */
        {0x477fefff, 0x4780, 0x7bff}, /* 65519.99: still 65504 in half */
        {0x477ff000, 0x4780, 0x7c00}, /* 65520: the tie, to even (infinity) */
        {0xc77ff000, 0xc780, 0xfc00},
        {0x7f800000, 0x7f80, 0x7c00}, /* infinities */
        {0xff800000, 0xff80, 0xfc00},
        {0x38800000, 0x3880, 0x0400}, /* 2^-14: half's smallest normal */
        {0x387fc000, 0x3880, 0x03ff}, /* 1023 * 2^-24: half's largest subnormal */
        {0x387fe000, 0x3880, 0x0400}, /* 1023.5 * 2^-24: tie, to 0x0400 (even) */
        {0x387ff000, 0x3880, 0x0400}, /* 1023.75 * 2^-24: up */
        {0x33800000, 0x3380, 0x0001}, /* 2^-24: the smallest subnormal */
        {0x33000000, 0x3300, 0x0000}, /* 2^-25: tie between 0 (even) and 2^-24 */
        {0x33000001, 0x3300, 0x0001}, /* above it: up */
        {0x33c00000, 0x33c0, 0x0002}, /* 1.5 * 2^-24: tie, to 2 (even) */
        {0x34200000, 0x3420, 0x0002}, /* 2.5 * 2^-24: tie, to 2 (even) */
        {0xb3900000, 0xb390, 0x8001}, /* -1.125 * 2^-24: down to -1 */
        {0xb4100000, 0xb410, 0x8002}, /* -2.25 * 2^-24: down to -2 */
        {0x00000001, 0x0000, 0x0000}, /* float32's smallest subnormal */
        {0x00400000, 0x0040, 0x0000}, /* a float32 subnormal, exact in BF16 */
        {0x807fffff, 0x8080, 0x8000}, /* rounds up to BF16's smallest normal */
    };
    int n = (int)(sizeof cases / sizeof cases[0]), bad = 0;
    for (int i = 0; i < n; i++) {
        uint16_t b = dpo_f32_to_bf16(from_bits(cases[i].in)),
                 h = dpo_f32_to_f16(from_bits(cases[i].in));
        if (b != cases[i].bf || h != cases[i].h) {
            fprintf(stderr, "0x%08x: bf16 0x%04x (expected 0x%04x), f16 0x%04x (expected 0x%04x)\n",
                    (unsigned)cases[i].in, b, cases[i].bf, h, cases[i].h);
            bad++;
        }
    }
    CHECK(bad == 0);

    /* NaN stays NaN, quiet, with its sign */
    {
        uint32_t nans[] = {0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff};
        for (int i = 0; i < 5; i++) {
            uint16_t b = dpo_f32_to_bf16(from_bits(nans[i])),
                     h = dpo_f32_to_f16(from_bits(nans[i]));
            CHECK(is_nan16(b, 1) && (b & 0x0040) && (b >> 15) == (nans[i] >> 31));
            CHECK(is_nan16(h, 0) && (h & 0x0200) && (h >> 15) == (nans[i] >> 31));
        }
    }

    /* Every 16-bit value widens exactly and narrows back to itself. */
    bad = 0;
    for (uint32_t v = 0; v < 65536; v++) {
        uint16_t b = dpo_f32_to_bf16(dpo_bf16_to_f32((uint16_t)v));
        uint16_t h = dpo_f32_to_f16(dpo_f16_to_f32((uint16_t)v));
        if (is_nan16((uint16_t)v, 1) ? !is_nan16(b, 1) : b != v) bad++;
        if (is_nan16((uint16_t)v, 0) ? !is_nan16(h, 0) : h != v) bad++;
    }
    CHECK(bad == 0);

    /* Between two neighbours, every float32 goes to the nearer, ties to even:
       all float32 bit patterns from 1.0 to 2.0 against the definition. */
    bad = 0;
    for (uint32_t u = 0x3f800000; u < 0x40000000; u += 7) {
        float x = from_bits(u);
        uint16_t b = dpo_f32_to_bf16(x), h = dpo_f32_to_f16(x);
        double lo_b = dpo_bf16_to_f32((uint16_t)(u >> 16)),
               hi_b = dpo_bf16_to_f32((uint16_t)((u >> 16) + 1));
        uint16_t hlo = (uint16_t)(0x3c00 + ((u & 0x7fffff) >> 13));
        double lo_h = dpo_f16_to_f32(hlo), hi_h = dpo_f16_to_f32((uint16_t)(hlo + 1));
        uint16_t want_b = (x - lo_b < hi_b - x || (x - lo_b == hi_b - x && !((u >> 16) & 1)))
                              ? (uint16_t)(u >> 16)
                              : (uint16_t)((u >> 16) + 1);
        uint16_t want_h = (x - lo_h < hi_h - x || (x - lo_h == hi_h - x && !(hlo & 1)))
                              ? hlo
                              : (uint16_t)(hlo + 1);
        if (b != want_b || h != want_h) bad++;
    }
    CHECK(bad == 0);
}

/* ---- the one-tensor-at-a-time reader -------------------------------------------------- */

static void test_reader(void) {
    int64_t s23[2] = {2, 3}, s32[2] = {3, 2}, s2[1] = {2};
    /* 1 + 2^-8 is a BF16 tie (down to 1), 1 + 2^-7 exact, 3.0 exact */
    float wv[6] = {1.0f, 1.00390625f, 1.0078125f, -3.0f, 0.0f, 65536.0f};
    dpo_tensor *w = dpo_tensor_new(DPO_F32, 2, s23, &e);
    dpo_tensor *ids = dpo_tensor_zeros(DPO_I32, 1, s2, &e);
    dpo_tensor *ts[2], *dst, *bad;
    const char *names[2] = {"w", "ids"};
    const char *path = in_dir("bf16.safetensors");
    dpo_st_reader *r;
    const dpo_st_info *in;
    float want[6] = {1.0f, 1.0f, 1.0078125f, -3.0f, 0.0f, 65536.0f};
    ts[0] = w, ts[1] = ids;
    memcpy(dpo_f32(w), wv, sizeof wv);
    dpo_i32(ids)[0] = 7, dpo_i32(ids)[1] = -9;
    CHECK(dpo_st_save_as(path, 2, names, ts, 0, NULL, NULL, DPO_ST_BF16, &e) == DPO_OK);

    r = dpo_st_open(path, &e);
    CHECK(r != NULL);
    if (!r) return;
    CHECK(dpo_st_count(r) == 2);
    CHECK(strcmp(dpo_st_path(r), path) == 0);
    CHECK(dpo_st_index(r, "w") == 1 && dpo_st_index(r, "ids") == 0 && dpo_st_index(r, "x") == -1);
    in = dpo_st_info_at(r, 1);
    CHECK(in && strcmp(in->name, "w") == 0 && strcmp(in->dtype, "BF16") == 0 && in->ndim == 2 &&
          in->shape[0] == 2 && in->shape[1] == 3 && in->numel == 6 && in->to == DPO_F32);
    in = dpo_st_info_at(r, 0);
    CHECK(in && strcmp(in->dtype, "I32") == 0 && in->to == DPO_I32);
    CHECK(dpo_st_info_at(r, 2) == NULL && dpo_st_info_at(r, -1) == NULL);

    dst = dpo_tensor_zeros(DPO_F32, 2, s23, &e);
    CHECK(dpo_st_read(r, 1, dst, &e) == DPO_OK);
    CHECK(memcmp(dpo_f32(dst), want, sizeof want) == 0);
    /* read again after its pages were given back: the same values */
    memset(dpo_f32(dst), 0, sizeof want);
    CHECK(dpo_st_read(r, 1, dst, &e) == DPO_OK);
    CHECK(memcmp(dpo_f32(dst), want, sizeof want) == 0);
    bad = dpo_tensor_zeros(DPO_I32, 1, s2, &e);
    CHECK(dpo_st_read(r, 0, bad, &e) == DPO_OK);
    CHECK(dpo_i32(bad)[0] == 7 && dpo_i32(bad)[1] == -9);
    dpo_tensor_release(bad);

    /* misuse: a destination of another shape or dtype, a tensor that is not there */
    bad = dpo_tensor_zeros(DPO_F32, 2, s32, &e);
    CHECK(dpo_st_read(r, 1, bad, &e) == DPO_ERR_SHAPE);
    CHECK_STR(e.msg, "tensor 'w' has shape 2x3, the destination 3x2");
    CHECK_STR(e.msg, path);
    dpo_tensor_release(bad);
    bad = dpo_tensor_zeros(DPO_I32, 2, s23, &e);
    CHECK(dpo_st_read(r, 1, bad, &e) == DPO_ERR_TYPE);
    dpo_tensor_release(bad);
    CHECK(dpo_st_read(r, 2, dst, &e) == DPO_ERR_RANGE);
    dpo_st_close(r);
    dpo_st_close(NULL);

    /* F16 too, and F32 read through the reader equals what dpo_st_load gives */
    CHECK(dpo_st_save_as(path, 1, names, ts, 0, NULL, NULL, DPO_ST_F16, &e) == DPO_OK);
    r = dpo_st_open(path, &e);
    CHECK(r && strcmp(dpo_st_info_at(r, 0)->dtype, "F16") == 0);
    if (r) {
        float wh[6] = {1.0f, 1.00390625f, 1.0078125f, -3.0f, 0.0f, INFINITY}; /* 65536 overflows */
        CHECK(dpo_st_read(r, 0, dst, &e) == DPO_OK);
        CHECK(memcmp(dpo_f32(dst), wh, sizeof wh) == 0);
        dpo_st_close(r);
    }
    CHECK(dpo_st_save_as(path, 1, names, ts, 0, NULL, NULL, DPO_ST_F32, &e) == DPO_OK);
    r = dpo_st_open(path, &e);
    if (r) {
        CHECK(strcmp(dpo_st_info_at(r, 0)->dtype, "F32") == 0);
        CHECK(dpo_st_read(r, 0, dst, &e) == DPO_OK);
        CHECK(memcmp(dpo_f32(dst), wv, sizeof wv) == 0);
        dpo_st_close(r);
    }
    CHECK(dpo_st_save_as(path, 1, names, ts, 0, NULL, NULL, (dpo_st_float)7, &e) == DPO_ERR_ARG);

    /* a truncated file is refused when opened, naming the file and the tensor */
    {
        unsigned char buf[512];
        size_t n;
        CHECK(dpo_st_save_as(path, 2, names, ts, 0, NULL, NULL, DPO_ST_BF16, &e) == DPO_OK);
        n = read_bytes(path, buf, sizeof buf);
        write_bytes(in_dir("short.safetensors"), buf, n - 3);
        r = dpo_st_open(in_dir("short.safetensors"), &e);
        CHECK(r == NULL);
        CHECK_STR(e.msg, "short.safetensors: tensor 'w'");
        CHECK_STR(e.msg, "file truncated?");
        dpo_st_close(r);
    }
    CHECK(dpo_st_open(in_dir("none.safetensors"), &e) == NULL && e.status == DPO_ERR_IO);
    dpo_tensor_release(dst);
    dpo_tensor_release(w);
    dpo_tensor_release(ids);
}

int main(void) {
    if (tmpdir_make("dpo_st") < 0) return 1;
    test_round_trip();
    test_conversions();
    test_malformed();
    test_save_errors();
    test_narrowing();
    test_reader();
    tmpdir_remove();
    return check_report("test_safetensors");
}
