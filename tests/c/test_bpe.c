/*
** test_bpe.c: the tokenizer engine from C. GPT-2's pre-tokenizer on tricky
** text (and invalid UTF-8), the fast merges against GPT-2's own loop,
** training (deterministic across thread counts), save -> load, the round
** trip of random bytes, and the errors bad files give.
** Files are written under a fresh temporary directory.
*/
#include "text/bpe.h"
#include "check.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/dpo_test_bpe_XXXXXX";

static void write_file(const char *name, const char *text) {
    char path[256];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static const char *in_tmp(const char *name) {
    static char path[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(path[k], sizeof path[k], "%s/%s", tmpdir, name);
    return path[k];
}

/* The pieces of s joined by '|'. */
static const char *pieces(const char *s, size_t n) {
    static char out[1024];
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t j = dpo_bpe_next_piece(s, n, i);
        if (i) out[k++] = '|';
        memcpy(out + k, s + i, j - i);
        k += j - i;
        i = j;
    }
    out[k] = '\0';
    return out;
}

#define CHECK_PIECES(s, want) CHECK(strcmp(pieces(s, sizeof(s) - 1), want) == 0)

static void test_pretokenize(void) {
    CHECK_PIECES("Hello world", "Hello| world");
    CHECK_PIECES("I'm here, you're not", "I|'m| here|,| you|'re| not");
    CHECK_PIECES("CAN'T", "CAN|'|T");
    CHECK_PIECES("'s'll've", "'s|'ll|'ve");
    CHECK_PIECES("  spaces", " | spaces");
    CHECK_PIECES("a   b", "a|  | b");
    CHECK_PIECES("a\n\nb", "a|\n|\n|b");
    CHECK_PIECES("end  ", "end|  ");
    CHECK_PIECES("\n\n", "\n\n");
    CHECK_PIECES("x \t y", "x| \t| y");
    CHECK_PIECES("abc123def", "abc|123|def");
    CHECK_PIECES(" 123 !!? ", " 123| !!?| ");
    CHECK_PIECES("\xE2\x80\x94\xE2\x80\x94ok", "\xE2\x80\x94\xE2\x80\x94|ok"); /* em dashes */
    CHECK_PIECES("caf\xC3\xA9 na\xC3\xAFve", "caf\xC3\xA9| na\xC3\xAFve");     /* letters */
    CHECK_PIECES("e\xCC\x81", "e|\xCC\x81"); /* a combining mark is not a letter */
    CHECK_PIECES("a\xC2\xA0"
                 "b",
                 "a|\xC2\xA0|b"); /* NBSP is White_Space */
    CHECK_PIECES("\xE6\x97\xA5\xE6\x9C\xAC 123", "\xE6\x97\xA5\xE6\x9C\xAC| 123");
    CHECK_PIECES(" \xF0\x9F\xA4\x97!", " \xF0\x9F\xA4\x97!"); /* emoji and '!' are symbols */
    /* invalid UTF-8: each bad byte is a symbol of its own */
    CHECK_PIECES("a\xFF"
                 "b",
                 "a|\xFF|b");
    CHECK_PIECES("!\xFF!", "!\xFF!");
    CHECK_PIECES(" \xC3", " \xC3");
    CHECK_PIECES("\xED\xA0\x80x", "\xED\xA0\x80|x"); /* an encoded surrogate */
    CHECK_PIECES("ab\xC3", "ab|\xC3");
}

/*
** The trainer cuts long texts after a lone "\n" between two non-space ASCII
** bytes: such a cut must leave the pieces as they are.
*/
static void test_safe_cuts(void) {
    static const char alphabet[] = "ab1 \n\n\t'.!\xC3\xA9";
    char s[200];
    uint32_t x = 7;
    int ok = 1, cuts = 0;
    for (int k = 0; k < 2000 && ok; k++) {
        size_t n = 3 + (size_t)(k % 150);
        for (size_t i = 0; i < n; i++) {
            x = x * 1664525u + 1013904223u;
            s[i] = alphabet[(x >> 16) % (sizeof alphabet - 1)];
        }
        for (size_t p = 2; p < n && ok; p++) {
            unsigned char before = (unsigned char)s[p - 2], after = (unsigned char)s[p];
            char whole[1024], parts[1024];
            if (s[p - 1] != '\n' || before >= 0x80 || after >= 0x80 || strchr(" \n\t", before) ||
                strchr(" \n\t", after))
                continue;
            cuts++;
            strcpy(whole, pieces(s, n));
            strcpy(parts, pieces(s, p));
            strcat(parts, "|");
            strcat(parts, pieces(s + p, n - p));
            ok = strcmp(whole, parts) == 0;
        }
    }
    CHECK(ok);
    CHECK(cuts > 100);
}

/* A small corpus with repetition, for training. */
static char *corpus(size_t *n) {
    static const char *const words[] = {
        "the",   "cat",  "sat",   "on",          "mat",          "I'm", "don't",
        "dog's", "123",  "4567",  "caf\xC3\xA9", "\xE6\x97\xA5", "!!",  "\xF0\x9F\xA4\x97",
        "  ",    "\n\n", "Hello", "world"};
    size_t cap = 1 << 16, k = 0;
    char *s = (char *)malloc(cap);
    uint32_t x = 12345;
    while (k < cap - 32) {
        const char *w;
        x = x * 1664525u + 1013904223u;
        w = words[(x >> 16) % (sizeof words / sizeof *words)];
        s[k++] = (x >> 8) % 7 == 0 ? '\n' : ' ';
        memcpy(s + k, w, strlen(w));
        k += strlen(w);
    }
    *n = k;
    return s;
}

static dpo_bpe *train(const char *text, size_t n, int32_t vocab, dpo_error *e) {
    const char *specials[] = {"<|endoftext|>", "<pad>"};
    dpo_bpe_corpus c = {0};
    dpo_bpe_train_opts o = {0};
    c.texts = &text;
    c.lens = &n;
    c.ntexts = 1;
    o.vocab_size = vocab;
    o.min_frequency = 2;
    o.special = specials;
    o.nspecial = 2;
    return dpo_bpe_train(&c, &o, e);
}

static int same_ids(const dpo_bpe_ids *a, const dpo_bpe_ids *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->ids, b->ids, a->n * sizeof *a->ids) == 0);
}

static int round_trips(dpo_bpe *t, const char *s, size_t n) {
    dpo_bpe_ids v = {0};
    dpo_error e;
    size_t len = 0;
    char *back;
    int ok;
    if (dpo_bpe_encode(t, s, n, 1, &v, &e) != DPO_OK) return 0;
    back = dpo_bpe_decode(t, v.ids, v.n, 0, &len, &e);
    ok = back && len == n && memcmp(back, s, n) == 0;
    free(back);
    dpo_bpe_ids_free(&v);
    return ok;
}

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    char *s;
    long k;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    k = ftell(f);
    fseek(f, 0, SEEK_SET);
    s = (char *)malloc((size_t)k + 1);
    *n = fread(s, 1, (size_t)k, f);
    s[*n] = '\0';
    fclose(f);
    return s;
}

static void test_train_and_merges(void) {
    size_t n, n1, n2;
    char *text = corpus(&n), *f1, *f2;
    dpo_error e;
    dpo_bpe *t, *t1, *back;
    dpo_bpe_ids a = {0}, b = {0};
    uint32_t x = 99;
    int threads = omp_get_max_threads();

    t = train(text, n, 400, &e);
    CHECK(t != NULL);
    if (!t) {
        fprintf(stderr, "train: %s\n", e.msg);
        free(text);
        return;
    }
    CHECK(dpo_bpe_vocab_size(t) <= 400);
    CHECK(dpo_bpe_num_merges(t) > 20);
    CHECK(dpo_bpe_token_to_id(t, "<|endoftext|>", 13) == dpo_bpe_vocab_size(t) - 2);
    CHECK(dpo_bpe_role_id(t, DPO_BPE_EOS) == dpo_bpe_vocab_size(t) - 2);
    CHECK(dpo_bpe_role_id(t, DPO_BPE_PAD) == dpo_bpe_vocab_size(t) - 1);
    CHECK(dpo_bpe_token_to_id(t, "\xC4\xA0the", 5) >= 256); /* "Ġthe" was learnt */

    /* the fast merges agree with GPT-2's loop, short words and long ones */
    for (int k = 0; k < 3000; k++) {
        char w[400];
        size_t len = 1 + (k % 5 == 0 ? 100 + k % 250 : k % 24);
        for (size_t i = 0; i < len; i++) {
            x = x * 1664525u + 1013904223u;
            w[i] = "the cat sat\xC3\xA9!1234'"[(x >> 16) % 19];
        }
        a.n = b.n = 0;
        dpo_bpe_word(t, w, len, 1, &a, &e);
        dpo_bpe_word(t, w, len, 0, &b, &e);
        if (!same_ids(&a, &b)) {
            CHECK(same_ids(&a, &b));
            break;
        }
    }
    CHECK(a.n > 0);

    /* the same merges with one thread or several, so the same file */
    omp_set_num_threads(1);
    t1 = train(text, n, 400, &e);
    omp_set_num_threads(threads > 1 ? threads : 2);
    CHECK(t1 != NULL);
    CHECK(dpo_bpe_save(t, in_tmp("a.json"), &e) == DPO_OK);
    CHECK(t1 && dpo_bpe_save(t1, in_tmp("b.json"), &e) == DPO_OK);
    f1 = read_all(in_tmp("a.json"), &n1);
    f2 = read_all(in_tmp("b.json"), &n2);
    CHECK(f1 && f2 && n1 == n2 && memcmp(f1, f2, n1) == 0);
    CHECK(f1 && strstr(f1, "\"type\": \"BPE\"") != NULL);
    free(f1), free(f2);
    dpo_bpe_free(t1);

    /* save -> load: the same ids, roles included */
    back = dpo_bpe_load(in_tmp("a.json"), &e);
    CHECK(back != NULL);
    if (back) {
        const char *s = "the cat's 1234 <|endoftext|> caf\xC3\xA9\n\n  \xF0\x9F\xA4\x97<pad>";
        a.n = b.n = 0;
        CHECK(dpo_bpe_encode(t, s, strlen(s), 1, &a, &e) == DPO_OK);
        CHECK(dpo_bpe_encode(back, s, strlen(s), 1, &b, &e) == DPO_OK);
        CHECK(same_ids(&a, &b));
        CHECK(dpo_bpe_vocab_size(back) == dpo_bpe_vocab_size(t));
        CHECK(dpo_bpe_num_merges(back) == dpo_bpe_num_merges(t));
        CHECK(dpo_bpe_role_id(back, DPO_BPE_PAD) == dpo_bpe_role_id(t, DPO_BPE_PAD));
        dpo_bpe_free(back);
    }

    /* encode_batch gives what encode gives, text by text */
    {
        const char *texts[40];
        size_t lens[40];
        dpo_bpe_ids outs[40];
        int same = 1;
        memset(outs, 0, sizeof outs);
        for (int k = 0; k < 40; k++) {
            texts[k] = text + k * 997;
            lens[k] = (size_t)(k * 37 % 1500);
        }
        CHECK(dpo_bpe_encode_batch(t, 40, texts, lens, 1, outs, &e) == DPO_OK);
        for (int k = 0; k < 40; k++) {
            a.n = 0;
            dpo_bpe_encode(t, texts[k], lens[k], 1, &a, &e);
            same = same && same_ids(&a, &outs[k]);
            dpo_bpe_ids_free(&outs[k]);
        }
        CHECK(same);
    }

    /* random bytes round-trip, with the trained and the byte tokenizer */
    {
        dpo_bpe *by = dpo_bpe_bytes(&e);
        int ok = by != NULL;
        for (int k = 0; ok && k < 500; k++) {
            char s[300];
            size_t len = (size_t)(k % 300);
            for (size_t i = 0; i < len; i++) {
                x = x * 1664525u + 1013904223u;
                s[i] = k % 2 ? (char)(x >> 24) : " ab'\n\xC3\xA9\xF0\x9F"[(x >> 16) % 10];
            }
            ok = round_trips(t, s, len) && round_trips(by, s, len);
        }
        CHECK(ok);
        CHECK(by && dpo_bpe_vocab_size(by) == 257);
        CHECK(by && dpo_bpe_role_id(by, DPO_BPE_EOS) == 256);
        dpo_bpe_free(by);
    }

    /* an id out of range names the id */
    {
        int32_t bad[2] = {5, 999999};
        size_t len;
        CHECK(dpo_bpe_decode(t, bad, 2, 0, &len, &e) == NULL);
        CHECK_STR(e.msg, "id 999999 is out of range");
        CHECK(e.arg == 1);
    }
    dpo_bpe_ids_free(&a);
    dpo_bpe_ids_free(&b);
    dpo_bpe_free(t);
    free(text);
}

/* A text of several MiB is counted in pieces, on threads; as a file, in
** blocks: the same tokenizer every way. */
static void test_train_large(void) {
    size_t n, total = 0, n1, n2, n3;
    char *unit = corpus(&n), *big, *f1, *f2, *f3;
    dpo_error e;
    dpo_bpe *t, *t1, *tf;
    dpo_bpe_corpus c = {0};
    dpo_bpe_train_opts o = {0};
    const char *path = in_tmp("big.txt"), *big_c;
    FILE *f;
    int threads = omp_get_max_threads();
    big = (char *)malloc(48 * n + 1);
    for (int k = 0; k < 48; k++) { /* vary the copies a little */
        memcpy(big + total, unit, n);
        big[total + (size_t)k * 13 % n] = (char)('A' + k % 26);
        total += n;
    }
    t = train(big, total, 300, &e);
    omp_set_num_threads(1);
    t1 = train(big, total, 300, &e);
    omp_set_num_threads(threads > 1 ? threads : 2);
    f = fopen(path, "wb");
    fwrite(big, 1, total, f);
    fclose(f);
    c.paths = &path;
    c.npaths = 1;
    o.vocab_size = 300;
    o.min_frequency = 2;
    big_c = "<|endoftext|>";
    o.special = &big_c;
    o.nspecial = 1;
    tf = dpo_bpe_train(&c, &o, &e);
    CHECK(t && t1 && tf);
    if (t && t1 && tf) {
        /* tf has one special token fewer: compare the merges through the files */
        dpo_bpe_save(t, in_tmp("l1.json"), &e);
        dpo_bpe_save(t1, in_tmp("l2.json"), &e);
        f1 = read_all(in_tmp("l1.json"), &n1);
        f2 = read_all(in_tmp("l2.json"), &n2);
        CHECK(n1 == n2 && memcmp(f1, f2, n1) == 0);
        CHECK(dpo_bpe_num_merges(tf) == dpo_bpe_num_merges(t) + 1);
        dpo_bpe_save(tf, in_tmp("l3.json"), &e);
        f3 = read_all(in_tmp("l3.json"), &n3);
        /* the merges lists agree up to the one more tf had room for */
        {
            const char *m1 = strstr(f1, "\"merges\""), *m3 = strstr(f3, "\"merges\"");
            CHECK(m1 && m3 && strncmp(m1, m3, (size_t)(strrchr(f1, '"') + 1 - m1)) == 0);
        }
        free(f1), free(f2), free(f3);
    }
    dpo_bpe_free(t);
    dpo_bpe_free(t1);
    dpo_bpe_free(tf);
    free(big);
    free(unit);
}

/* A GPT-2-style pair of files: a tiny vocabulary and its merges. */
static void test_gpt2_files(void) {
    dpo_error e;
    dpo_bpe *t;
    dpo_bpe_ids v = {0};
    char vocab[8192];
    size_t k = 0;
    /* bytes 'a'..'e' and space as byte-level tokens, then merges */
    k += (size_t)snprintf(vocab + k, sizeof vocab - k,
                          "{\"a\": 0, \"b\": 1, \"c\": 2, \"d\": 3, \"e\": 4, \"\xC4\xA0\": 5, "
                          "\"ab\": 6, \"abc\": 7, \"\xC4\xA0"
                          "a\": 8, \"<|endoftext|>\": 9}");
    write_file("vocab.json", vocab);
    write_file("merges.txt", "#version: 0.2\na b\r\nab c\n\xC4\xA0 a\n\n");
    t = dpo_bpe_load(tmpdir, &e);
    CHECK(t != NULL);
    if (!t) {
        fprintf(stderr, "load: %s\n", e.msg);
        return;
    }
    CHECK(dpo_bpe_num_merges(t) == 3);
    CHECK(dpo_bpe_role_id(t, DPO_BPE_EOS) == 9);
    CHECK(dpo_bpe_role_id(t, DPO_BPE_BOS) == 9);
    CHECK(dpo_bpe_encode(t, "abcd abab<|endoftext|>", 22, 1, &v, &e) == DPO_OK);
    /* abcd -> abc d; " abab" -> " " ab ab (rank 0 "a b" before rank 2 "Ġ a"); the special */
    CHECK(v.n == 6 && v.ids[0] == 7 && v.ids[1] == 3 && v.ids[2] == 5 && v.ids[3] == 6 &&
          v.ids[4] == 6 && v.ids[5] == 9);
    dpo_bpe_ids_free(&v);
    dpo_bpe_free(t);
}

/* A merge of tokens holding a space is saved as a pair, so that it loads again. */
static void test_save_spaced_merges(void) {
    dpo_error e;
    dpo_bpe *t, *back;
    dpo_bpe_ids v = {0}, w = {0};
    write_file("spaced.json",
               "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"use_regex\": false}, "
               "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a \": 0, \"b\": 1, "
               "\"a b\": 2, \"x\": 3, \"xx\": 4}, \"merges\": [[\"a \", \"b\"], \"x x\"]}}");
    t = dpo_bpe_load(in_tmp("spaced.json"), &e);
    CHECK(t != NULL);
    if (!t) {
        fprintf(stderr, "load: %s\n", e.msg);
        return;
    }
    CHECK(dpo_bpe_save(t, in_tmp("spaced_saved.json"), &e) == DPO_OK);
    back = dpo_bpe_load(in_tmp("spaced_saved.json"), &e);
    CHECK(back != NULL);
    if (!back) {
        fprintf(stderr, "load again: %s\n", e.msg);
    } else {
        CHECK(dpo_bpe_num_merges(back) == 2);
        CHECK(dpo_bpe_word(t, "xx", 2, 1, &v, &e) == DPO_OK);
        CHECK(dpo_bpe_word(back, "xx", 2, 1, &w, &e) == DPO_OK);
        CHECK(v.n == 1 && w.n == 1 && v.ids[0] == 4 && w.ids[0] == 4);
        dpo_bpe_free(back);
    }
    dpo_bpe_ids_free(&v);
    dpo_bpe_ids_free(&w);
    dpo_bpe_free(t);
}

static void expect_error(const char *path, const char *fragment) {
    dpo_error e;
    dpo_bpe *t = dpo_bpe_load(path, &e);
    CHECK(t == NULL);
    if (t) {
        dpo_bpe_free(t);
        return;
    }
    CHECK_STR(e.msg, fragment);
    CHECK_STR(e.msg, path);
}

static void test_bad_files(void) {
    char p[300];
    expect_error(in_tmp("missing.json"), "No such file or directory");
    write_file("trunc.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0");
    expect_error(in_tmp("trunc.json"), "trunc.json:1:");
    write_file("wp.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
    expect_error(in_tmp("wp.json"), "unsupported model type 'WordPiece'");
    write_file("list.json", "[1, 2, 3]");
    expect_error(in_tmp("list.json"), "not a tokenizer.json");
    write_file("meta.json", "{\"pre_tokenizer\": {\"type\": \"UnicodeScripts\"}, \"model\": "
                            "{\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}");
    expect_error(in_tmp("meta.json"), "unsupported pre_tokenizer 'UnicodeScripts'");
    write_file("id.json", "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": "
                          "{\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}");
    expect_error(in_tmp("id.json"), "the id of token 'a' is not an integer");
    write_file("big.json", "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": "
                           "{\"type\": \"BPE\", \"vocab\": {\"a\": 2000000000}, \"merges\": []}}");
    expect_error(in_tmp("big.json"), "out of range");
    write_file("merge.json", "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": "
                             "{\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a z\"]}}");
    expect_error(in_tmp("merge.json"), "merge 1: the merge's token 'z' is not in the vocabulary");
    /* a directory with a broken merges.txt names the file and line */
    snprintf(p, sizeof p, "%s/sub", tmpdir);
    mkdir(p, 0700);
    write_file("sub/vocab.json", "{\"a\": 0, \"b\": 1}");
    write_file("sub/merges.txt", "#version: 0.2\na b\n");
    expect_error(p, "sub/merges.txt:2: the merged token 'ab' is not in the vocabulary");
    write_file("sub/merges.txt", "a  b\n");
    expect_error(p, "merges.txt:1: a merge is two tokens separated by one space");
    snprintf(p, sizeof p, "%s/empty", tmpdir);
    mkdir(p, 0700);
    expect_error(p, "no tokenizer.json");
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_pretokenize();
    test_safe_cuts();
    test_train_and_merges();
    test_train_large();
    test_gpt2_files();
    test_save_spaced_merges();
    test_bad_files();
    {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return check_report("test_bpe");
}
