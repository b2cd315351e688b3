/*
** head.h: the language-model head over a packed batch's scored positions,
** shared by the models.
**
** A model scores S positions of its N rows: position s reads the final
** hidden state of packed token row[s], and its log-probability of target
** tok[s] adds to row seq[s]'s logps. The logits hs W^T are formed a chunk of
** positions at a time ([chunk, V] of scratch, never [S, V]); each position's
** log-sum-exp is kept for the backward, which forms them again.
**
** With a frozen head and nothing below it that needs more than its input
** gradient (a base under adapters), the backward's vocabulary pass moves into
** the forward: the input gradient of position s is dlogps[seq[s]] times
** (onehot(tok[s]) - softmax) W, all of it known in the forward but the
** factor, so the forward computes the rest while the logits are at hand and
** the backward only scales it.
**
** Every buffer belongs to the model (its activation arena).
*/
#ifndef DPO_HEAD_H
#define DPO_HEAD_H

typedef struct dpo_head {
    int C, V;            /* hidden width, vocabulary */
    int N, S;            /* rows, scored positions */
    int chunk;           /* positions per logits chunk */
    const float *W;      /* [V, C] the output embedding */
    const float *hidden; /* [Nt, C] final hidden states of the packed tokens */
    const int *row;      /* [S] the packed token each position reads */
    const int *tok;      /* [S] its target */
    const int *seq;      /* [S] the row it scores for */
    float *hs;           /* [S, C] the states gathered (kept for the backward) */
    float *lse;          /* [S] log-sum-exp of each position's logits */
    float *logits;       /* [chunk, V] scratch */
} dpo_head;

/*
** logps [N] = the sum of each row's log p(target); counts [N] += its scored
** positions (counts may be NULL). With unit ([S, C]), also the input
** gradients but for dlogps (see above) into unit.
*/
void dpo_head_forward(const dpo_head *h, float *logps, float *counts, float *unit);

/*
** The backward for dlogps [N]: dhidden [Nt, C] += the hidden states'
** gradient; dW [V, C] += W's (dW may be NULL: none wanted). dhs [S, C] holds
** the forward's unit gradients when unit, else it is scratch.
*/
void dpo_head_backward(const dpo_head *h, const float *dlogps, float *dhs, int unit, float *dW,
                       float *dhidden);

#endif
