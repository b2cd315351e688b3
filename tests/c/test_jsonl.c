/*
** test_jsonl.c: the data engine (core/data/jsonl.c): the line reader on plain and
** gzip files (written here with zlib directly, not with the writer under
** test), line endings, long lines, a bounded buffer, truncated and corrupt
** gzip streams, files that cannot be read; the atomic writer; the pair store's
** truncation rules and collation, checked against values worked out by hand.
*/
#include "check.h"
#include "tmpdir.h"
#include "data/jsonl.h"

#include <sys/stat.h>

#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static dpo_error e;

static void write_gz(const char *path, const void *p, size_t n) {
    gzFile g = gzopen(path, "wb9");
    if (!g) return;
    if (n) gzwrite(g, p, (unsigned)n);
    gzclose(g);
}

static size_t read_bytes(const char *path, unsigned char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    size_t n;
    if (!f) return 0;
    n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* Read every line of path into one string, lines joined by '|'; returns the count. */
static int all_lines(const char *path, char *out, size_t cap, int *status) {
    dpo_jsonl *r = dpo_jsonl_open(path, &e);
    const char *s;
    size_t n, used = 0;
    int64_t lineno;
    int count = 0, rc;
    out[0] = 0;
    *status = 0;
    if (!r) {
        *status = -2;
        return 0;
    }
    while ((rc = dpo_jsonl_next(r, &s, &n, &lineno, &e)) == 1) {
        if (lineno != count + 1) *status = -3;
        if (used + n + 2 < cap) {
            if (count) out[used++] = '|';
            memcpy(out + used, s, n);
            used += n;
            out[used] = 0;
        }
        count++;
    }
    if (rc < 0) *status = -1;
    dpo_jsonl_close(r);
    return count;
}

static void test_lines(void) {
    char out[256];
    int st;
    const char crlf[] = "\xEF\xBB\xBF"
                        "a\r\nbb\n\r\n\nccc";
    write_bytes(in_dir("crlf.txt"), crlf, sizeof crlf - 1);
    CHECK(all_lines(in_dir("crlf.txt"), out, sizeof out, &st) == 5);
    CHECK(st == 0);
    CHECK(strcmp(out, "a|bb|||ccc") == 0);

    write_gz(in_dir("crlf.gz"), crlf, sizeof crlf - 1);
    CHECK(all_lines(in_dir("crlf.gz"), out, sizeof out, &st) == 5);
    CHECK(strcmp(out, "a|bb|||ccc") == 0);

    /* gzip is known by its magic bytes: a gzip stream named .txt, plain text named .gz */
    {
        dpo_jsonl *r1, *r2;
        write_gz(in_dir("z.txt"), "x\n", 2);
        write_bytes(in_dir("p.gz"), "x\n", 2);
        r1 = dpo_jsonl_open(in_dir("z.txt"), &e);
        r2 = dpo_jsonl_open(in_dir("p.gz"), &e);
        CHECK(r1 && dpo_jsonl_is_gzip(r1));
        CHECK(r2 && !dpo_jsonl_is_gzip(r2));
        dpo_jsonl_close(r1);
        dpo_jsonl_close(r2);
    }

    /* empty files and a lone newline */
    write_bytes(in_dir("empty.txt"), "", 0);
    CHECK(all_lines(in_dir("empty.txt"), out, sizeof out, &st) == 0 && st == 0);
    write_gz(in_dir("empty.gz"), "", 0);
    CHECK(all_lines(in_dir("empty.gz"), out, sizeof out, &st) == 0 && st == 0);
    write_bytes(in_dir("nl.txt"), "\n", 1);
    CHECK(all_lines(in_dir("nl.txt"), out, sizeof out, &st) == 1 && out[0] == 0);
    /* two bytes of a BOM are text */
    write_bytes(in_dir("bom2.txt"), "\xEF\xBB", 2);
    CHECK(all_lines(in_dir("bom2.txt"), out, sizeof out, &st) == 1 && strlen(out) == 2);
}

static void test_long_lines(void) {
    size_t big = (size_t)3 << 20; /* 3 MiB on one line, then two short ones */
    char *buf = malloc(big + 8);
    dpo_jsonl *r;
    const char *s;
    size_t n;
    int64_t lineno;
    if (!buf) return;
    for (size_t i = 0; i < big; i++) buf[i] = (char)('a' + i % 26);
    memcpy(buf + big, "\nxy\nz", 5);
    write_gz(in_dir("long.gz"), buf, big + 5);
    r = dpo_jsonl_open(in_dir("long.gz"), &e);
    CHECK(r != NULL);
    if (r) {
        CHECK(dpo_jsonl_next(r, &s, &n, &lineno, &e) == 1);
        CHECK(n == big && lineno == 1 && memcmp(s, buf, big) == 0);
        CHECK(dpo_jsonl_next(r, &s, &n, &lineno, &e) == 1);
        CHECK(n == 2 && memcmp(s, "xy", 2) == 0 && lineno == 2);
        CHECK(dpo_jsonl_next(r, &s, &n, &lineno, &e) == 1);
        CHECK(n == 1 && s[0] == 'z' && lineno == 3);
        CHECK(dpo_jsonl_next(r, &s, &n, &lineno, &e) == 0);
        CHECK(dpo_jsonl_next(r, &s, &n, &lineno, &e) == 0);
        CHECK(dpo_jsonl_buffer_size(r) >= big);
        dpo_jsonl_close(r);
    }

    /* 200,000 short lines: the buffer never grows */
    {
        size_t m = 200000, k = 0;
        char *many = malloc(m * 12);
        size_t first = 0;
        int64_t count = 0;
        if (many) {
            for (size_t i = 0; i < m; i++) k += (size_t)sprintf(many + k, "line %zu\n", i);
            write_gz(in_dir("many.gz"), many, k);
            r = dpo_jsonl_open(in_dir("many.gz"), &e);
            if (r) {
                first = dpo_jsonl_buffer_size(r);
                while (dpo_jsonl_next(r, &s, &n, &lineno, &e) == 1) count++;
                CHECK(count == (int64_t)m);
                CHECK(dpo_jsonl_buffer_size(r) == first);
                CHECK(first <= ((size_t)1 << 18));
                CHECK(dpo_jsonl_offset(r) > 0);
                dpo_jsonl_close(r);
            }
            free(many);
        }
    }
    free(buf);
}

static void test_bad_streams(void) {
    unsigned char gz[8192];
    char text[6000];
    size_t k = 0, n;
    dpo_jsonl *r;
    const char *s;
    size_t len;
    int64_t lineno = 0;
    int rc, lines = 0;
    for (int i = 0; i < 300; i++) k += (size_t)sprintf(text + k, "{\"n\": %d}\n", i);
    write_gz(in_dir("whole.gz"), text, k);
    n = read_bytes(in_dir("whole.gz"), gz, sizeof gz);
    CHECK(n > 100);

    /* cut short: the lines before, then an error, again on every call */
    write_bytes(in_dir("cut.gz"), gz, n / 2);
    r = dpo_jsonl_open(in_dir("cut.gz"), &e);
    CHECK(r != NULL);
    if (r) {
        while ((rc = dpo_jsonl_next(r, &s, &len, &lineno, &e)) == 1) lines++;
        CHECK(rc == -1);
        CHECK(lines < 300);
        CHECK(lineno == lines + 1);
        CHECK(e.status == DPO_ERR_IO);
        CHECK_STR(e.msg, "truncated gzip stream (unexpected end of file)");
        CHECK(dpo_jsonl_next(r, &s, &len, &lineno, &e) == -1);
        CHECK_STR(e.msg, "truncated gzip stream");
        dpo_jsonl_close(r);
    }

    /* only the header */
    write_bytes(in_dir("head.gz"), gz, 10);
    r = dpo_jsonl_open(in_dir("head.gz"), &e);
    if (r) {
        CHECK(dpo_jsonl_next(r, &s, &len, &lineno, &e) == -1);
        CHECK(lineno == 1);
        CHECK_STR(e.msg, "truncated gzip stream");
        dpo_jsonl_close(r);
    }

    /* a wrong check value */
    gz[n - 7] ^= 1;
    write_bytes(in_dir("crc.gz"), gz, n);
    r = dpo_jsonl_open(in_dir("crc.gz"), &e);
    if (r) {
        while ((rc = dpo_jsonl_next(r, &s, &len, &lineno, &e)) == 1) {
        }
        CHECK(rc == -1);
        CHECK_STR(e.msg, "corrupt gzip stream (incorrect data check)");
        dpo_jsonl_close(r);
    }

    /* garbage inside the deflate data */
    gz[n - 7] ^= 1;
    memset(gz + 20, 0xff, 40);
    write_bytes(in_dir("bad.gz"), gz, n);
    r = dpo_jsonl_open(in_dir("bad.gz"), &e);
    if (r) {
        while ((rc = dpo_jsonl_next(r, &s, &len, &lineno, &e)) == 1) {
        }
        CHECK(rc == -1);
        CHECK_STR(e.msg, "corrupt gzip stream");
        dpo_jsonl_close(r);
    }

    /* files that cannot be opened */
    CHECK(dpo_jsonl_open(in_dir("missing.jsonl"), &e) == NULL);
    CHECK(e.status == DPO_ERR_IO);
    CHECK_STR(e.msg, "missing.jsonl: No such file or directory");
    CHECK(dpo_jsonl_open(dir, &e) == NULL);
    CHECK_STR(e.msg, ": Is a directory");
}

static void test_writer(void) {
    char out[256];
    int st;
    dpo_jsonl_writer *w = dpo_jsonl_writer_open(in_dir("w.jsonl.gz"), 1, &e);
    DIR *d;
    struct dirent *ent;
    int tmp_left = 0;
    CHECK(w != NULL);
    if (w) {
        dpo_jsonl_write(w, "{\"a\": 1}\n", 9);
        dpo_jsonl_write(w, "{\"a\": 2}\n", 9);
        CHECK(access(in_dir("w.jsonl.gz"), F_OK) != 0); /* nothing until commit */
        CHECK(dpo_jsonl_writer_commit(w, &e) == DPO_OK);
    }
    CHECK(all_lines(in_dir("w.jsonl.gz"), out, sizeof out, &st) == 2);
    CHECK(strcmp(out, "{\"a\": 1}|{\"a\": 2}") == 0);
    {
        dpo_jsonl *r = dpo_jsonl_open(in_dir("w.jsonl.gz"), &e);
        CHECK(r && dpo_jsonl_is_gzip(r));
        dpo_jsonl_close(r);
    }
    w = dpo_jsonl_writer_open(in_dir("w.jsonl"), 0, &e);
    if (w) {
        dpo_jsonl_write(w, "plain\n", 6);
        CHECK(dpo_jsonl_writer_commit(w, &e) == DPO_OK);
    }
    CHECK(all_lines(in_dir("w.jsonl"), out, sizeof out, &st) == 1 && strcmp(out, "plain") == 0);
    /* abort keeps the old file */
    w = dpo_jsonl_writer_open(in_dir("w.jsonl"), 0, &e);
    if (w) {
        dpo_jsonl_write(w, "new\n", 4);
        dpo_jsonl_writer_abort(w);
    }
    CHECK(all_lines(in_dir("w.jsonl"), out, sizeof out, &st) == 1 && strcmp(out, "plain") == 0);
    CHECK(dpo_jsonl_writer_open(in_dir("no/such/dir.jsonl"), 0, &e) == NULL);
    CHECK_STR(e.msg, "No such file or directory");
    d = opendir(dir);
    while (d && (ent = readdir(d)))
        if (strstr(ent->d_name, ".tmp.")) tmp_left++;
    if (d) closedir(d);
    CHECK(tmp_left == 0);
}

/* ---- pairs ------------------------------------------------------------------------------ */

static int same(const int32_t *a, const int32_t *b, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static void test_pairs(void) {
    enum { EOS = 99, BOS = 98, PAD = 97 };
    dpo_pairs *s = dpo_pairs_new(PAD, &e);
    dpo_pair_opts o = {10, 4, DPO_KEEP_END, EOS, BOS};
    dpo_pair_info f;
    const int32_t p[] = {1, 2, 3, 4, 5, 6}, c[] = {11, 12, 13, 14, 15, 16, 17, 18}, r[] = {21, 22};
    const int32_t *ids;
    int32_t n;
    if (!s) return;

    /* fits: nothing cut, EOS after each response */
    CHECK(dpo_pairs_add(s, p, 3, c, 2, r, 2, &o, &f, &e) == DPO_OK);
    CHECK(f.fate == DPO_PAIR_KEPT && f.row == 0);
    CHECK(f.np == 3 && f.nc == 3 && f.nr == 3 && !f.prompt_cut && !f.response_cut);
    ids = dpo_pairs_part(s, 0, 1, &n);
    CHECK(n == 3 && same(ids, (const int32_t[]){11, 12, EOS}, 3));

    /* 6 + 3 > 10? no: 9 fits, the prompt stays whole although longer than P */
    CHECK(dpo_pairs_add(s, p, 6, c, 2, r, 1, &o, &f, &e) == DPO_OK);
    CHECK(f.np == 6 && !f.prompt_cut);

    /* 6 + 9 > 10: the prompt keeps its last 4; 4 + 9 > 10: responses keep 6 */
    CHECK(dpo_pairs_add(s, p, 6, c, 8, r, 2, &o, &f, &e) == DPO_OK);
    CHECK(f.row == 2 && f.prompt_cut && f.response_cut);
    CHECK(f.np == 4 && f.nc == 6 && f.nr == 3);
    CHECK(f.np_full == 6 && f.nc_full == 9 && f.nr_full == 3);
    ids = dpo_pairs_part(s, 2, 0, &n);
    CHECK(n == 4 && same(ids, (const int32_t[]){3, 4, 5, 6}, 4));
    ids = dpo_pairs_part(s, 2, 1, &n);
    CHECK(n == 6 && same(ids, (const int32_t[]){11, 12, 13, 14, 15, 16}, 6)); /* no EOS */
    ids = dpo_pairs_part(s, 2, 2, &n);
    CHECK(n == 3 && same(ids, (const int32_t[]){21, 22, EOS}, 3));

    /* keep_start keeps the first 4 */
    o.truncation = DPO_KEEP_START;
    CHECK(dpo_pairs_add(s, p, 6, c, 8, r, 2, &o, &f, &e) == DPO_OK);
    ids = dpo_pairs_part(s, 3, 0, &n);
    CHECK(n == 4 && same(ids, (const int32_t[]){1, 2, 3, 4}, 4));
    o.truncation = DPO_KEEP_END;

    /* a cut that leaves the EOS as the last kept token */
    CHECK(dpo_pairs_add(s, p, 4, c, 5, r, 1, &o, &f, &e) == DPO_OK);
    CHECK(f.nc == 6 && !f.response_cut);
    ids = dpo_pairs_part(s, 4, 1, &n);
    CHECK(n == 6 && ids[5] == EOS);

    /* an empty prompt takes the bos token; without one the pair goes */
    CHECK(dpo_pairs_add(s, p, 0, c, 1, r, 1, &o, &f, &e) == DPO_OK);
    CHECK(f.fate == DPO_PAIR_KEPT && f.np == 1 && f.np_full == 0);
    ids = dpo_pairs_part(s, 5, 0, &n);
    CHECK(n == 1 && ids[0] == BOS);
    o.bos_id = -1;
    CHECK(dpo_pairs_add(s, p, 0, c, 1, r, 1, &o, &f, &e) == DPO_OK);
    CHECK(f.fate == DPO_PAIR_EMPTY_PROMPT && f.row == -1);
    o.bos_id = BOS;

    /* without EOS an empty response empties the pair */
    o.eos_id = -1;
    CHECK(dpo_pairs_add(s, p, 2, c, 0, r, 2, &o, &f, &e) == DPO_OK);
    CHECK(f.fate == DPO_PAIR_EMPTY_RESPONSE && f.row == -1);
    o.eos_id = EOS;
    CHECK(dpo_pairs_count(s) == 6);

    /* bad options */
    o.max_prompt_length = 10;
    CHECK(dpo_pairs_add(s, p, 2, c, 2, r, 2, &o, &f, &e) == DPO_ERR_ARG);
    CHECK_STR(e.msg, "max_prompt_length 10");
    o.max_prompt_length = 4;

    /* collate rows 0 and 2: [4, T], T = max(3+3, 3+3, 4+6, 4+3) = 10 */
    {
        int64_t rows[2] = {0, 2};
        dpo_tensor *ids2, *mask, *plen, *rlen;
        CHECK(dpo_pairs_collate(s, rows, 2, 0, &ids2, &mask, &plen, &rlen, &e) == DPO_OK);
        CHECK(ids2->shape[0] == 4 && ids2->shape[1] == 10 && ids2->dtype == DPO_I32);
        CHECK(mask->dtype == DPO_I32 && plen->shape[0] == 4 && rlen->shape[0] == 4);
        if (ids2->shape[1] == 10) {
            const int32_t *I = dpo_i32(ids2), *M = dpo_i32(mask);
            CHECK(same(I, (const int32_t[]){1, 2, 3, 11, 12, EOS, PAD, PAD, PAD, PAD}, 10));
            CHECK(same(I + 10, (const int32_t[]){3, 4, 5, 6, 11, 12, 13, 14, 15, 16}, 10));
            CHECK(same(I + 20, (const int32_t[]){1, 2, 3, 21, 22, EOS, PAD, PAD, PAD, PAD}, 10));
            CHECK(same(I + 30, (const int32_t[]){3, 4, 5, 6, 21, 22, EOS, PAD, PAD, PAD}, 10));
            CHECK(same(M, (const int32_t[]){0, 0, 0, 1, 1, 1, 0, 0, 0, 0}, 10));
            CHECK(same(M + 10, (const int32_t[]){0, 0, 0, 0, 1, 1, 1, 1, 1, 1}, 10));
            CHECK(same(M + 30, (const int32_t[]){0, 0, 0, 0, 1, 1, 1, 0, 0, 0}, 10));
            CHECK(same(dpo_i32(plen), (const int32_t[]){3, 4, 3, 4}, 4));
            CHECK(same(dpo_i32(rlen), (const int32_t[]){3, 6, 3, 3}, 4));
        }
        dpo_tensor_release(ids2);
        dpo_tensor_release(mask);
        dpo_tensor_release(plen);
        dpo_tensor_release(rlen);

        /* SFT: chosen rows only */
        CHECK(dpo_pairs_collate(s, rows, 2, 1, &ids2, &mask, &plen, &rlen, &e) == DPO_OK);
        CHECK(ids2->shape[0] == 2 && ids2->shape[1] == 10);
        CHECK(same(dpo_i32(rlen), (const int32_t[]){3, 6}, 2));
        dpo_tensor_release(ids2);
        dpo_tensor_release(mask);
        dpo_tensor_release(plen);
        dpo_tensor_release(rlen);

        rows[1] = 6;
        CHECK(dpo_pairs_collate(s, rows, 2, 0, &ids2, &mask, &plen, &rlen, &e) == DPO_ERR_RANGE);
        CHECK(ids2 == NULL && mask == NULL);
        CHECK_STR(e.msg, "row 6 out of range 0..5");
        CHECK(dpo_pairs_collate(s, rows, 0, 0, &ids2, &mask, &plen, &rlen, &e) == DPO_ERR_ARG);
    }
    CHECK(dpo_pairs_part(s, 9, 0, &n) == NULL && n == 0);
    dpo_pairs_free(s);
}

int main(void) {
    if (tmpdir_make("test_jsonl") < 0) return 1;
    test_lines();
    test_long_lines();
    test_bad_streams();
    test_writer();
    test_pairs();
    tmpdir_remove();
    return check_report("test_jsonl");
}
