/*
** fuzz_tokenizer_json.c: the tokenizer.json loader on arbitrary files.
**
** Each input is a whole tokenizer.json given to dpo_bpe_load (the path of a
** file, as dpo.tokenizer.load takes it). A refused file must say which file
** it was; a loaded tokenizer goes through fuzz_check_tokenizer (encoding,
** decoding, save and load again).
*/
#include "fuzz_tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("tokenizer.json", data, size);
    dpo_error e;
    dpo_bpe *t = dpo_bpe_load(path, &e);
    if (!t) {
        FUZZ_CHECK(e.status != DPO_OK && strstr(e.msg, path) != NULL);
        return 0;
    }
    fuzz_check_tokenizer(t);
    dpo_bpe_free(t);
    return 0;
}
