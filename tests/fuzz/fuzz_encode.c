/*
** fuzz_encode.c: encoding arbitrary bytes.
**
** Made once: the byte tokenizer, a tokenizer trained here on a small corpus
** (with special tokens), the fixture tests/fixtures/tokenizer/tiny.json (an
** lstrip added token), and two variants of it (add_prefix_space;
** ignore_merges without the regex split). Each input is one text, encoded
** by each with added tokens matched and not. Promised and checked:
**   - every id is in the vocabulary and decodes;
**   - decode(encode(s)) == s when special tokens are not matched (with a
**     space in front for add_prefix_space), and also when they are for the
**     tokenizers without lstrip / rstrip tokens;
**   - encoding twice (the second time from the word cache) and
**     encode_batch give the same ids;
**   - GPT-2's pieces cover the text in order, and the fast merges of each
**     piece equal GPT-2's own loop.
*/
#include "fuzz_tok.h"

#define NTOK 5

static dpo_bpe *toks[NTOK];
static int exact_special[NTOK]; /* the round trip holds with special tokens matched */

static const char corpus[] =
    "The quick brown fox jumps over the lazy dog. It's here, isn't it? We'll see; they'd "
    "know, I'm sure. 1234567 + 89 = 1234656.\n\n  Human: What is BPE?\n\nAssistant: "
    "Byte-pair encoding merges the most frequent pairs.<|endoftext|>\xc3\xa9t\xc3\xa9 "
    "\xc3\xa0 la plage, na\xc3\xafve caf\xc3\xa9. \xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97 "
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80\xf0\x9f\x98\x80 \t\ttabs\r\n"
    "<|im_start|>user hello hello hello the the the there their<|im_end|>";

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    char *s;
    long len;
    if (!f || fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        abort();
    s = (char *)malloc((size_t)len + 1);
    if (!s || fread(s, 1, (size_t)len, f) != (size_t)len) abort();
    fclose(f);
    s[len] = '\0';
    *n = (size_t)len;
    return s;
}

/* s (malloc'd) with its first `from` replaced by `to`; s is freed. */
static char *replace(char *s, const char *from, const char *to) {
    const char *at = strstr(s, from);
    size_t a, b = strlen(to), c;
    char *v;
    if (!at) abort();
    a = (size_t)(at - s);
    c = strlen(at + strlen(from));
    v = (char *)malloc(a + b + c + 1);
    if (!v) abort();
    memcpy(v, s, a);
    memcpy(v + a, to, b);
    memcpy(v + a + b, at + strlen(from), c + 1);
    free(s);
    return v;
}

/* The tokenizer of the JSON text s (freed), written to name. */
static dpo_bpe *load_text(char *s, const char *name) {
    dpo_error e;
    dpo_bpe *t;
    fuzz_write(name, s, strlen(s));
    free(s);
    if (!(t = dpo_bpe_load_json(fuzz_path(name), &e))) {
        fprintf(stderr, "fuzz_encode: %s\n", e.msg);
        abort();
    }
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    const char *text = corpus;
    size_t len = sizeof corpus - 1, n;
    dpo_bpe_corpus c = {0};
    dpo_bpe_train_opts o = {0};
    dpo_error e;
    char *tiny;
    (void)argc, (void)argv;
    setenv("OMP_NUM_THREADS", "1", 1);
    c.texts = &text;
    c.lens = &len;
    c.ntexts = 1;
    o.vocab_size = 256 + 64 + 3;
    o.min_frequency = 2;
    o.special = specials;
    o.nspecial = 3;
    toks[0] = dpo_bpe_bytes(&e);
    toks[1] = dpo_bpe_train(&c, &o, &e);
    toks[2] = dpo_bpe_load_json(DPO_FUZZ_SOURCE_DIR "/tests/fixtures/tokenizer/tiny.json", &e);
    for (int k = 0; k < 3; k++)
        if (!toks[k]) {
            fprintf(stderr, "fuzz_encode: %s\n", e.msg);
            abort();
        }
    tiny = read_all(DPO_FUZZ_SOURCE_DIR "/tests/fixtures/tokenizer/tiny.json", &n);
    toks[3] = load_text(
        replace(strdup(tiny), "\"add_prefix_space\": false", "\"add_prefix_space\": true"),
        "prefix.json");
    toks[4] = load_text(replace(replace(strdup(tiny), "\"type\": \"BPE\"",
                                        "\"type\": \"BPE\", \"ignore_merges\": true"),
                                "\"use_regex\": true", "\"use_regex\": false"),
                        "ignore.json");
    free(tiny);
    exact_special[0] = exact_special[1] = 1;
    return 0;
}

static int same(const dpo_bpe_ids *a, const dpo_bpe_ids *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->ids, b->ids, a->n * sizeof *a->ids) == 0);
}

/* GPT-2's pieces of s, and the fast merges of each against the reference. */
static void check_pieces(dpo_bpe *t, const char *s, size_t n) {
    dpo_bpe_ids fast = {0}, ref = {0};
    dpo_error e;
    for (size_t i = 0; i < n;) {
        size_t j = dpo_bpe_next_piece(s, n, i);
        FUZZ_CHECK(j > i && j <= n);
        fast.n = ref.n = 0;
        FUZZ_CHECK(dpo_bpe_word(t, s + i, j - i, 1, &fast, &e) == DPO_OK);
        FUZZ_CHECK(dpo_bpe_word(t, s + i, j - i, 0, &ref, &e) == DPO_OK);
        FUZZ_CHECK(same(&fast, &ref));
        i = j;
    }
    dpo_bpe_ids_free(&fast);
    dpo_bpe_ids_free(&ref);
}

static void check_encode(int k, const char *s, size_t n, int special) {
    dpo_bpe *t = toks[k];
    dpo_bpe_ids ids = {0}, again = {0}, batch[2] = {{0}, {0}};
    const char *texts[2] = {s, s};
    size_t lens[2] = {n, n}, len;
    int32_t vocab = dpo_bpe_vocab_size(t);
    dpo_error e;
    char *back;
    FUZZ_CHECK(dpo_bpe_encode(t, s, n, special, &ids, &e) == DPO_OK);
    for (size_t i = 0; i < ids.n; i++) FUZZ_CHECK(ids.ids[i] >= 0 && ids.ids[i] < vocab);
    back = dpo_bpe_decode(t, ids.ids, ids.n, 0, &len, &e);
    FUZZ_CHECK(back != NULL);
    if (k == 3 && !special && n > 0 && s[0] != ' ') { /* add_prefix_space */
        FUZZ_CHECK(len == n + 1 && back[0] == ' ' && memcmp(back + 1, s, n) == 0);
    } else if (!special || exact_special[k]) {
        FUZZ_CHECK(len == n && (n == 0 || memcmp(back, s, n) == 0));
    }
    free(back);
    FUZZ_CHECK(dpo_bpe_encode(t, s, n, special, &again, &e) == DPO_OK);
    FUZZ_CHECK(same(&ids, &again));
    FUZZ_CHECK(dpo_bpe_encode_batch(t, 2, texts, lens, special, batch, &e) == DPO_OK);
    FUZZ_CHECK(same(&ids, &batch[0]) && same(&ids, &batch[1]));
    dpo_bpe_ids_free(&ids);
    dpo_bpe_ids_free(&again);
    dpo_bpe_ids_free(&batch[0]);
    dpo_bpe_ids_free(&batch[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    for (int k = 0; k < NTOK; k++) {
        check_encode(k, s, size, 0);
        check_encode(k, s, size, 1);
    }
    check_pieces(toks[1], s, size);
    check_pieces(toks[2], s, size);
    return 0;
}
