/*
** fuzz_tokenizer_files.c: GPT-2's pair of tokenizer files, and the files
** beside them, on arbitrary bytes.
**
** An input is cut at its NUL bytes into at most five parts, which become the
** files of a directory: vocab.json, merges.txt, then (when present)
** special_tokens_map.json, added_tokens.json and tokenizer_config.json. The
** directory goes to dpo_bpe_load, as dpo.tokenizer.load(dir) gives it. A
** refused directory must say which file was wrong (a path under the
** directory); a loaded tokenizer goes through fuzz_check_tokenizer.
*/
#include "fuzz_tok.h"

static const char *const names[] = {"vocab.json", "merges.txt", "special_tokens_map.json",
                                    "added_tokens.json", "tokenizer_config.json"};
#define NFILES (sizeof names / sizeof *names)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = (const char *)data, *end = p + size;
    char dirpath[512];
    size_t k = 0;
    dpo_error e;
    dpo_bpe *t;
    for (; k < NFILES && (k < 2 || p < end); k++) {
        const char *nul = (const char *)memchr(p, 0, (size_t)(end - p));
        const char *stop = nul && k + 1 < NFILES ? nul : end;
        fuzz_write(names[k], p, (size_t)(stop - p));
        p = stop < end ? stop + 1 : end;
    }
    for (; k < NFILES; k++) fuzz_unlink(names[k]);
    snprintf(dirpath, sizeof dirpath, "%s", fuzz_path(""));
    dirpath[strlen(dirpath) - 1] = '\0'; /* the directory itself, without its "/" */
    t = dpo_bpe_load(dirpath, &e);
    if (!t) {
        FUZZ_CHECK(e.status != DPO_OK && strstr(e.msg, dirpath) != NULL);
        return 0;
    }
    fuzz_unlink("saved.json");
    fuzz_check_tokenizer(t);
    dpo_bpe_free(t);
    return 0;
}
