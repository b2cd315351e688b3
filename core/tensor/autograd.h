/*
** autograd.h: the tape of reverse-mode automatic differentiation.
**
** When grad mode is on and an input of an op requires grad, the op's output
** gets a node: the op, its inputs (retained), what backward needs (the output's
** values, indices, a condition) and the op's parameters. dpo_backward walks the
** nodes reachable from a root in reverse topological order, computes each
** input's gradient with the op's rule, reduces broadcast dims back to the
** input's shape, and accumulates into the `grad` of leaves. Then it frees what
** the nodes held: a graph is used by one backward.
*/
#ifndef DPO_AUTOGRAD_H
#define DPO_AUTOGRAD_H

#include "tensor/tensor.h"

/* What an op's backward needs besides its inputs and output. */
typedef struct dpo_ag_params {
    int dim, dim2; /* dims (0-based): reductions, softmax, indexing, transpose */
    int keepdim;   /* reductions */
    int64_t start; /* narrow start, select index */
    int has_lo, has_hi;
    double lo, hi;     /* clamp */
    dpo_tensor *saved; /* indices of max/min, index of gather, cond of where */
    int index_base;    /* the base of saved indices (1 for Lua-facing ones) */
} dpo_ag_params;

/*
** A coarse node (DPO_OP_GPT_LOGPS) brings its own backward: called with
** dL/d(output), it accumulates straight into the gradients it owns (a model's
** gradient arena) and returns a status. release frees ctx with the node.
*/
typedef struct dpo_custom {
    dpo_status (*backward)(void *ctx, const dpo_tensor *gout, dpo_error *e);
    void (*release)(void *ctx);
    void *ctx;
} dpo_custom;

typedef struct dpo_node {
    dpo_op op;
    int refcount;
    int ninputs;
    dpo_tensor **inputs; /* retained */
    dpo_tensor *output;  /* a node-less view of the output's values, or NULL */
    dpo_ag_params p;     /* p.saved retained */
    int out_ndim;
    int64_t out_shape[DPO_MAXDIM];
    dpo_custom custom; /* for coarse nodes; backward == NULL otherwise */
    int freed;         /* set after backward released inputs and saved */
    /* during backward */
    dpo_tensor *gout; /* dL/d(output), [out_shape] */
    int mark;
} dpo_node;

int dpo_grad_enabled(void);
void dpo_set_grad_enabled(int on);

/* 1 when op has a backward rule. */
int dpo_op_differentiable(dpo_op op);

/* 1 when grad mode is on and one of in[0..n) requires grad. */
int dpo_ag_wants(dpo_tensor *const *in, int n);

/*
** Record that `out` was computed by op from in[0..n). Does nothing unless
** dpo_ag_wants(in, n). p may be NULL when the op has no parameters.
*/
dpo_status dpo_ag_record(dpo_tensor *out, dpo_op op, dpo_tensor *const *in, int n,
                         const dpo_ag_params *p, dpo_error *e);

/*
** Make `out` a node with a fused backward (no tensor inputs). Takes ownership of
** custom->ctx (released with the node, or at once on failure).
*/
dpo_status dpo_ag_record_custom(dpo_tensor *out, dpo_op op, const dpo_custom *custom, dpo_error *e);

/* Backpropagate from root; grad may be NULL when root has one element. */
dpo_status dpo_backward(dpo_tensor *root, const dpo_tensor *grad, dpo_error *e);

/* dpo_node_release is declared in tensor.h: a tensor releases its node. */

#endif
