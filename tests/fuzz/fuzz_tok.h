/*
** fuzz_tok.h: the checks the tokenizer-loading targets run on a tokenizer
** they managed to load from fuzzed files.
**
** It encodes a few fixed texts (special tokens matched and not); every id
** must be in the vocabulary and decode. Then it saves the tokenizer as a
** tokenizer.json (what a checkpoint holds) and loads that: the copy must
** load, have the same vocabulary size and merges, and encode the texts to
** the same ids.
*/
#ifndef DPO_FUZZ_TOK_H
#define DPO_FUZZ_TOK_H

#include "text/bpe.h"
#include "fuzz.h"

static const char *const fuzz_texts[] = {
    "Hello world! It's 2024, isn't it?\n\n  Human: hi\n\nAssistant: ok",
    "<|endoftext|><s></s><pad> \xc3\xa9t\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \xff\xfe x",
    "a b c aa bb cc abc  \t\r\n 123 4567 ''s 're 've 'll 'd 'm 't",
};
#define FUZZ_NTEXTS (sizeof fuzz_texts / sizeof *fuzz_texts)

/* The ids of fuzz_texts[k] (special matched or not), appended to out. */
static inline void fuzz_encode_texts(dpo_bpe *t, int special, dpo_bpe_ids *out) {
    dpo_error e;
    for (size_t k = 0; k < FUZZ_NTEXTS; k++) {
        FUZZ_CHECK(dpo_bpe_encode(t, fuzz_texts[k], strlen(fuzz_texts[k]), special, out, &e) ==
                   DPO_OK);
    }
}

static inline void fuzz_check_tokenizer(dpo_bpe *t) {
    dpo_bpe_ids ids[2] = {{0}, {0}}, again = {0};
    int32_t n = dpo_bpe_vocab_size(t);
    dpo_error e;
    dpo_bpe *u;
    for (int special = 0; special < 2; special++) {
        size_t len;
        char *s;
        fuzz_encode_texts(t, special, &ids[special]);
        for (size_t i = 0; i < ids[special].n; i++)
            FUZZ_CHECK(ids[special].ids[i] >= 0 && ids[special].ids[i] < n);
        s = dpo_bpe_decode(t, ids[special].ids, ids[special].n, 0, &len, &e);
        FUZZ_CHECK(s != NULL);
        free(s);
        s = dpo_bpe_decode(t, ids[special].ids, ids[special].n, 1, &len, &e);
        FUZZ_CHECK(s != NULL);
        free(s);
    }
    for (int r = 0; r < DPO_BPE_NROLES; r++) {
        int32_t id = dpo_bpe_role_id(t, (dpo_bpe_role)r);
        size_t len;
        FUZZ_CHECK(id == -1 || (id >= 0 && id < n && dpo_bpe_id_to_token(t, id, &len) != NULL));
    }
    if (dpo_bpe_save(t, fuzz_path("saved.json"), &e) == DPO_OK) {
        u = dpo_bpe_load_json(fuzz_path("saved.json"), &e);
        if (!u) fprintf(stderr, "reloading a saved tokenizer: %s\n", e.msg);
        FUZZ_CHECK(u != NULL);
        FUZZ_CHECK(dpo_bpe_vocab_size(u) == n);
        FUZZ_CHECK(dpo_bpe_num_merges(u) == dpo_bpe_num_merges(t));
        for (int special = 0; special < 2; special++) {
            again.n = 0;
            fuzz_encode_texts(u, special, &again);
            FUZZ_CHECK(again.n == ids[special].n);
            FUZZ_CHECK(again.n == 0 ||
                       memcmp(again.ids, ids[special].ids, again.n * sizeof *again.ids) == 0);
        }
        dpo_bpe_free(u);
    }
    dpo_bpe_ids_free(&ids[0]);
    dpo_bpe_ids_free(&ids[1]);
    dpo_bpe_ids_free(&again);
}

#endif
