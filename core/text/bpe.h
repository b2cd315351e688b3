/*
** bpe.h: BPE tokenizers.
**
** One object, dpo_bpe, covers GPT-2's tokenizer (vocab.json + merges.txt,
** or encoder.json + vocab.bpe), Hugging Face tokenizer.json files with a BPE
** model (Llama 2 and 3, Qwen2.5 and 3, Gemma 2 and 3, Mistral, SmolLM2,
** GPT-2, ...), the 256-byte tokenizer for models trained from scratch, and
** tokenizers trained here on a corpus. WordPiece and Unigram models are
** refused by name.
**
** GPT-2's layout (no normalizer, a ByteLevel pre-tokenizer) is encoded as
** GPT-2 does: added/special tokens are matched first, the rest is split by
** GPT-2's pattern (a scanner over code points, categories from utf8proc),
** each piece's bytes are BPE-merged by rank. Any other tokenizer.json goes
** through its stages as Hugging Face's tokenizers does (pipeline.h):
** added tokens, normalizer, pre-tokenizer (regexes by PCRE2), the model
** (byte-level or on characters, with byte_fallback, unk fusing, ignore_merges,
** subword affixes), the post-processor when DPO_BPE_ADD_SPECIAL is asked,
** and the decoders; the ids are Hugging Face's (tests/spec/hf_tokenizer_spec).
** Ids are 0-based.
** Invalid UTF-8 (GPT-2's path): every byte that does not start a valid
** sequence is a code unit of its own in the class "other symbol" (with
** punctuation), so it joins a neighbouring run of symbols; its byte token
** keeps the round trip exact. decode(encode(s)) == s for every byte string s
** when the tokenizer has all 256 byte tokens and does not add a prefix
** space. In the other pipelines such bytes pass the normalizers unchanged
** and are pieces of their own.
**
** Ownership: constructors return a new dpo_bpe (or NULL with e filled);
** dpo_bpe_free releases it. An encode call uses the tokenizer's word cache
** and scratch space, so one tokenizer serves one caller at a time;
** dpo_bpe_encode_batch runs its OpenMP threads with a cache each.
*/
#ifndef DPO_BPE_H
#define DPO_BPE_H

#include "base/common.h"

#include <stddef.h>
#include <stdint.h>

typedef struct dpo_bpe dpo_bpe;

/* A growable list of ids; zero-initialise, release with dpo_bpe_ids_free. */
typedef struct dpo_bpe_ids {
    int32_t *ids;
    size_t n, cap;
} dpo_bpe_ids;

void dpo_bpe_ids_free(dpo_bpe_ids *v);

/* The roles a special token can play. */
typedef enum {
    DPO_BPE_EOS = 0,
    DPO_BPE_BOS,
    DPO_BPE_PAD,
    DPO_BPE_UNK,
    DPO_BPE_NROLES
} dpo_bpe_role;

/* ---- construction ------------------------------------------------------------ */

/* A tokenizer.json file, or a directory holding tokenizer.json, or
** vocab.json + merges.txt, or encoder.json + vocab.bpe. A directory's
** tokenizer_config.json / special_tokens_map.json name the eos/bos/pad/unk
** tokens (strings or AddedToken objects); otherwise the usual names
** (<|endoftext|>, </s>, <s>, <pad>) do. tokenizer_config.json is kept and
** written back by dpo_bpe_save (chat_template and all). */
dpo_bpe *dpo_bpe_load(const char *path, dpo_error *e);
/* A Hugging Face tokenizer.json with a BPE model. */
dpo_bpe *dpo_bpe_load_json(const char *path, dpo_error *e);
/* GPT-2's pair of files: a JSON object token -> id, and the ranked merges. */
dpo_bpe *dpo_bpe_load_gpt2(const char *vocab_path, const char *merges_path, dpo_error *e);
/* Ids 0..255 are the bytes, 256 is <|endoftext|> (eos and bos). No merges. */
dpo_bpe *dpo_bpe_bytes(dpo_error *e);

typedef struct dpo_bpe_corpus {
    const char *const *texts; /* [ntexts] in-memory documents */
    const size_t *lens;       /* [ntexts] their lengths in bytes */
    size_t ntexts;
    const char *const *paths; /* [npaths] files, read in blocks */
    size_t npaths;
} dpo_bpe_corpus;

typedef struct dpo_bpe_train_opts {
    int32_t vocab_size;         /* all tokens: 256 bytes + merges + specials */
    int64_t min_frequency;      /* stop when the best pair occurs fewer times */
    const char *const *special; /* [nspecial] NUL-terminated, valid UTF-8 */
    int nspecial;
} dpo_bpe_train_opts;

/*
** Byte-level BPE training with GPT-2's pre-tokenization. Ids 0..255 are the
** bytes, then one id per merge (in merge order), then the special tokens;
** special tokens in the corpus are cut out before counting. Ties between
** pairs of equal count go to the smaller (first id, second id): the result
** depends only on the corpus and the options, not on the thread count.
*/
dpo_bpe *dpo_bpe_train(const dpo_bpe_corpus *c, const dpo_bpe_train_opts *o, dpo_error *e);

void dpo_bpe_free(dpo_bpe *t);

/* Write a tokenizer.json Hugging Face's tokenizers reads (the stages as
** they were read). When path is a directory: path/tokenizer.json and
** path/tokenizer_config.json (the one read, roles updated, or a new one).
** Written to a temporary name, flushed and renamed. */
dpo_status dpo_bpe_save(const dpo_bpe *t, const char *path, dpo_error *e);

/* ---- facts --------------------------------------------------------------------- */
int32_t dpo_bpe_vocab_size(const dpo_bpe *t); /* 1 + the largest id */
int32_t dpo_bpe_num_merges(const dpo_bpe *t);
/* 1 when the model reads bytes through GPT-2's alphabet, 0 when characters. */
int dpo_bpe_byte_level(const dpo_bpe *t);
/* The id of a token (its vocabulary string, byte-level form), or -1. */
int32_t dpo_bpe_token_to_id(const dpo_bpe *t, const char *s, size_t n);
/* The vocabulary string of id (not NUL-terminated; *n its length), or NULL. */
const char *dpo_bpe_id_to_token(const dpo_bpe *t, int32_t id, size_t *n);
/* The raw bytes id decodes to, or NULL. */
const char *dpo_bpe_id_to_bytes(const dpo_bpe *t, int32_t id, size_t *n);
int32_t dpo_bpe_role_id(const dpo_bpe *t, dpo_bpe_role r); /* -1: none */
/* id must be -1 (none) or a token of the vocabulary. */
dpo_status dpo_bpe_set_role(dpo_bpe *t, dpo_bpe_role r, int32_t id, dpo_error *e);
/* Added tokens, in the order of the file: k in 0..count-1 -> id, *special. */
int dpo_bpe_num_added(const dpo_bpe *t);
int32_t dpo_bpe_added(const dpo_bpe *t, int k, int *special);

/* ---- encoding and decoding ------------------------------------------------------- */

/* encode's flags: match added tokens in the text (else their text is
** encoded as ordinary text); put the post-processor's tokens around the
** ids (Hugging Face's add_special_tokens, e.g. Llama's <s>). */
enum { DPO_BPE_SPECIAL = 1, DPO_BPE_ADD_SPECIAL = 2 };

/* Append the ids of s[0..n) to out; flags as above (1: GPT-2's usual). */
dpo_status dpo_bpe_encode(dpo_bpe *t, const char *s, size_t n, int flags, dpo_bpe_ids *out,
                          dpo_error *e);
/* outs[k] gets the ids of texts[k] (appended); threads over the texts. */
dpo_status dpo_bpe_encode_batch(dpo_bpe *t, size_t count, const char *const *texts,
                                const size_t *lens, int flags, dpo_bpe_ids *outs, dpo_error *e);
/* The bytes of ids[0..n), malloc'd and NUL-terminated (*len without the
** NUL); skip_special drops special tokens. An unknown id fails (arg 1). */
char *dpo_bpe_decode(const dpo_bpe *t, const int32_t *ids, size_t n, int skip_special, size_t *len,
                     dpo_error *e);

/* ---- the parts, for tests and tools ----------------------------------------------- */

/* GPT-2's pattern: the end of the piece that starts at i (i < n). */
size_t dpo_bpe_next_piece(const char *s, size_t n, size_t i);
/* The BPE merges of one word's bytes, without the cache: the fast path
** (fast = 1) or GPT-2's reference algorithm, literally (fast = 0). */
dpo_status dpo_bpe_word(const dpo_bpe *t, const char *w, size_t n, int fast, dpo_bpe_ids *out,
                        dpo_error *e);

#endif
