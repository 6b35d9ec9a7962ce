/* cascade.c - Cascade reconciliation kernels: pass layouts, Alice's parity answers, Bob's batched
 * binary searches with the cascade effect. Protocol rules and message framing live in
 * qkdd/postprocess/cascade.py; this file does the bit work.
 *
 * Bob's bookkeeping, per started pass and top-level block: Alice's parity (announced once), the
 * mismatch bit (Alice's parity xor Bob's current parity), and whether a binary search runs in it.
 * A flip of key bit x toggles the mismatch of the block holding x in every started pass, in O(1) per
 * pass through the precomputed position maps (the cascade effect). Every parity Alice reveals is
 * cached per node of the block's halving tree, so a later search in the same block reuses it
 * (sub-block reuse, Martinez-Mateo et al., arXiv:1407.3257, sec. 4). Searches keep the invariant
 * "Bob's parity of the range differs from Alice's"; a flip inside a range toggles that bit, and a
 * search whose range became even is dropped before it costs another question.
 */
#include "qkd_cascade.h"
#include "qkd_bits.h"
#include "qkd_prng.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct pass {
    uint32_t kind;
    uint32_t block_bits;       /* CONTIGUOUS, SHUFFLED: nominal block size */
    size_t nblocks;
    size_t block_base;         /* index of block 0 in the per-block arrays */
    uint32_t half0;            /* HALVES: members of the first half */
    uint64_t nodes_per_block;  /* 2 * next power of two >= the longest block */
    uint32_t *pos;             /* SHUFFLED: position of key bit i in the pass order */
    uint32_t *perm;            /* SHUFFLED, Bob: key bit at pass position j */
    uint64_t *copy;            /* SHUFFLED: the key in pass order (Bob keeps it current) */
    uint64_t *mask;            /* HALVES: bit i set iff key bit i is in the first half */
    uint32_t *rank;            /* HALVES: members among key bits [0, 64 w), nwords + 1 entries */
    uint64_t *known, *value;   /* Bob: Alice's parity of halving-tree nodes, when revealed */
};

struct search {
    uint32_t lo, hi;   /* range in pass order; Bob's parity differs from Alice's when mis = 1 */
    uint32_t node;     /* heap index of the range in its block's halving tree (root = 1) */
    uint32_t block;
    uint8_t pass, pa, mis, live;
    uint8_t ready;     /* waiting for an answer, nothing changed since it asked */
    uint8_t asked;     /* tree levels asked in the outstanding round */
};

struct qkd_cascade {
    int role;
    uint64_t *key;
    size_t nwords, n;
    size_t npasses;
    struct pass passes[QKD_CASCADE_MAX_PASSES];
    size_t total_blocks;
    /* Bob */
    int have_top;
    size_t started;      /* passes [0, started) have begun */
    size_t outstanding;  /* questions sent and not yet answered */
    uint32_t few_searches, lookahead_levels;
    uint64_t *alice_top, *mismatch, *searching, *pending_bit, *visited;
    uint64_t *flipped;   /* key bits Bob has corrected: honest parities never flip a bit twice */
    int inconsistent;    /* the peer's parities contradict each other: the frame is lost */
    uint32_t *search_of, *pending, *free_slots, *active;
    size_t npending, nfree, nactive;
    struct search *slots;
    qkd_cascade_stats stats;
    void *arena;
};

/* ---- small helpers ---------------------------------------------------------------------------- */

static inline int bit_get(const uint64_t *w, uint64_t i)
{
    return (int)((w[i >> 6] >> (i & 63)) & 1u);
}

static inline void bit_set1(uint64_t *w, uint64_t i)
{
    w[i >> 6] |= (uint64_t)1 << (i & 63);
}

static inline void bit_clear(uint64_t *w, uint64_t i)
{
    w[i >> 6] &= ~((uint64_t)1 << (i & 63));
}

static inline void bit_toggle(uint64_t *w, uint64_t i)
{
    w[i >> 6] ^= (uint64_t)1 << (i & 63);
}

/* Branch-free population count: the portable build has no POPCNT, and libgcc's fallback is a
 * table loop (Hacker's Delight, 2nd ed., sec. 5-1). */
static inline unsigned popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (unsigned)((x * 0x0101010101010101ull) >> 56);
}

static inline uint64_t mask_from(unsigned lo)
{
    return ~(uint64_t)0 << lo;
}

static inline uint64_t mask_below(unsigned hi)
{
    return hi == 64 ? ~(uint64_t)0 : (((uint64_t)1 << hi) - 1);
}

/* Parity of bits [a, b) of w, a < b. */
static int range_parity(const uint64_t *w, size_t a, size_t b)
{
    size_t fw = a >> 6, lw = (b - 1) >> 6;
    uint64_t lo_mask = mask_from((unsigned)(a & 63)), hi_mask = mask_below((unsigned)((b - 1) & 63) + 1);
    if (fw == lw)
        return __builtin_parityll(w[fw] & lo_mask & hi_mask);
    uint64_t acc = w[fw] & lo_mask;
    for (size_t i = fw + 1; i < lw; i++)
        acc ^= w[i];
    acc ^= w[lw] & hi_mask;
    return __builtin_parityll(acc);
}

/* Parity of the bits of key in [a, b) (a < b) whose mask bit equals !invert. */
static int masked_parity(const uint64_t *key, const uint64_t *mask, int invert, size_t a, size_t b)
{
    uint64_t flip = invert ? ~(uint64_t)0 : 0;
    size_t fw = a >> 6, lw = (b - 1) >> 6;
    uint64_t lo_mask = mask_from((unsigned)(a & 63)), hi_mask = mask_below((unsigned)((b - 1) & 63) + 1);
    if (fw == lw)
        return __builtin_parityll(key[fw] & (mask[fw] ^ flip) & lo_mask & hi_mask);
    uint64_t acc = key[fw] & (mask[fw] ^ flip) & lo_mask;
    for (size_t i = fw + 1; i < lw; i++)
        acc ^= key[i] & (mask[i] ^ flip);
    acc ^= key[lw] & (mask[lw] ^ flip) & hi_mask;
    return __builtin_parityll(acc);
}

static inline uint32_t rd_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void wr_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint64_t next_pow2(uint64_t v)
{
    uint64_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

/* ---- pass geometry ---------------------------------------------------------------------------- */

static inline void block_range(const qkd_cascade *c, const struct pass *p, size_t b, uint32_t *lo, uint32_t *hi)
{
    if (p->kind == QKD_CASCADE_PASS_HALVES) {
        *lo = b == 0 ? 0 : p->half0;
        *hi = b == 0 ? p->half0 : (uint32_t)c->n;
        return;
    }
    uint64_t start = (uint64_t)b * p->block_bits, stop = start + p->block_bits;
    *lo = (uint32_t)start;
    *hi = (uint32_t)(stop < c->n ? stop : c->n);
}

static inline uint32_t rank1(const struct pass *p, size_t x)
{
    return p->rank[x >> 6] + (uint32_t)popcount64(p->mask[x >> 6] & mask_below((unsigned)(x & 63)));
}

/* Position of key bit x in the order of pass p. */
static inline uint32_t coord_of(const struct pass *p, size_t x)
{
    switch (p->kind) {
    case QKD_CASCADE_PASS_SHUFFLED:
        return p->pos[x];
    case QKD_CASCADE_PASS_HALVES: {
        uint32_t r1 = rank1(p, x);
        return bit_get(p->mask, x) ? r1 : p->half0 + ((uint32_t)x - r1);
    }
    default:
        return (uint32_t)x;
    }
}

static inline size_t block_of_coord(const struct pass *p, uint32_t j)
{
    if (p->kind == QKD_CASCADE_PASS_HALVES)
        return j < p->half0 ? 0 : 1;
    return j / p->block_bits;
}

/* Key index of the r-th member (ones == 1) or non-member (ones == 0) of a HALVES mask. */
static size_t select_member(const struct pass *p, size_t nwords, uint32_t r, int ones)
{
    size_t lo = 0, hi = nwords; /* largest w with count[w] <= r */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t count = ones ? p->rank[mid] : (uint64_t)mid * 64 - p->rank[mid];
        if (count <= r)
            lo = mid;
        else
            hi = mid;
    }
    uint64_t before = ones ? p->rank[lo] : (uint64_t)lo * 64 - p->rank[lo];
    uint64_t word = ones ? p->mask[lo] : ~p->mask[lo];
    for (uint64_t k = r - before; k > 0; k--)
        word &= word - 1;
    return lo * 64 + (size_t)__builtin_ctzll(word);
}

static inline size_t original_of(const qkd_cascade *c, const struct pass *p, uint32_t j)
{
    switch (p->kind) {
    case QKD_CASCADE_PASS_SHUFFLED:
        return p->perm[j];
    case QKD_CASCADE_PASS_HALVES:
        return j < p->half0 ? select_member(p, c->nwords, j, 1) : select_member(p, c->nwords, j - p->half0, 0);
    default:
        return j;
    }
}

/* Parity of positions [lo, hi) (lo < hi) of pass p, over `key` (Alice's or Bob's current key). */
static int pass_parity(const qkd_cascade *c, const struct pass *p, const uint64_t *key, uint32_t lo, uint32_t hi)
{
    switch (p->kind) {
    case QKD_CASCADE_PASS_SHUFFLED:
        return range_parity(p->copy, lo, hi);
    case QKD_CASCADE_PASS_HALVES: {
        int parity = 0;
        if (lo < p->half0) {
            uint32_t end = hi < p->half0 ? hi : p->half0;
            parity ^= masked_parity(key, p->mask, 0, select_member(p, c->nwords, lo, 1),
                                    select_member(p, c->nwords, end - 1, 1) + 1);
        }
        if (hi > p->half0) {
            uint32_t start = lo > p->half0 ? lo : p->half0;
            parity ^= masked_parity(key, p->mask, 1, select_member(p, c->nwords, start - p->half0, 0),
                                    select_member(p, c->nwords, hi - 1 - p->half0, 0) + 1);
        }
        return parity;
    }
    default:
        return range_parity(key, lo, hi);
    }
}

/* ---- construction ----------------------------------------------------------------------------- */

struct arena {
    uint8_t *base;
    size_t used;
    int overflow;
};

static void *carve(struct arena *a, uint64_t count, size_t size)
{
    size_t off = (a->used + 63) & ~(size_t)63;
    if (off < a->used || (size && count > (SIZE_MAX - off) / size)) {
        a->overflow = 1;
        return NULL;
    }
    a->used = off + (size_t)count * size;
    return a->base ? a->base + off : NULL;
}

static void layout(qkd_cascade *c, struct arena *a)
{
    int bob = c->role == QKD_CASCADE_BOB;
    for (size_t i = 0; i < c->npasses; i++) {
        struct pass *p = &c->passes[i];
        if (p->kind == QKD_CASCADE_PASS_SHUFFLED) {
            p->pos = carve(a, c->n, sizeof(uint32_t));
            p->perm = bob ? carve(a, c->n, sizeof(uint32_t)) : NULL;
            p->copy = carve(a, c->nwords, sizeof(uint64_t));
        } else if (p->kind == QKD_CASCADE_PASS_HALVES) {
            p->mask = carve(a, c->nwords, sizeof(uint64_t));
            p->rank = carve(a, (uint64_t)c->nwords + 1, sizeof(uint32_t));
        }
        if (bob) {
            uint64_t nodes = (uint64_t)p->nblocks * p->nodes_per_block;
            p->known = carve(a, nodes / 64 + 1, sizeof(uint64_t));
            p->value = carve(a, nodes / 64 + 1, sizeof(uint64_t));
        }
    }
    if (bob) {
        uint64_t bw = c->total_blocks / 64 + 1;
        c->alice_top = carve(a, bw, sizeof(uint64_t));
        c->mismatch = carve(a, bw, sizeof(uint64_t));
        c->searching = carve(a, bw, sizeof(uint64_t));
        c->pending_bit = carve(a, bw, sizeof(uint64_t));
        c->visited = carve(a, bw, sizeof(uint64_t));
        c->flipped = carve(a, c->nwords, sizeof(uint64_t));
        c->search_of = carve(a, c->total_blocks, sizeof(uint32_t));
        c->pending = carve(a, c->total_blocks, sizeof(uint32_t));
        c->free_slots = carve(a, c->total_blocks, sizeof(uint32_t));
        c->active = carve(a, c->total_blocks, sizeof(uint32_t));
        c->slots = carve(a, c->total_blocks, sizeof(struct search));
    }
}

/* Ask for transparent huge pages under [start, start + bytes): the shuffled pass's position maps are read
 * and written at random, and with 4 KiB pages nearly every access of a large frame's map also misses the
 * TLB (and its first touch faults a page in). Only the whole 2 MiB pages inside the range are advised;
 * where the kernel does not offer them (THP "never", another OS) this does nothing. */
static void advise_huge(void *start, size_t bytes)
{
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t lo = ((uintptr_t)start + huge - 1) & ~(huge - 1);
    uintptr_t hi = ((uintptr_t)start + bytes) & ~(huge - 1);
    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)start;
    (void)bytes;
#endif
}

/* p->copy = the key in the order of SHUFFLED pass p (ones scattered to their positions). */
static void permute_key(qkd_cascade *c, struct pass *p)
{
    memset(p->copy, 0, c->nwords * sizeof(uint64_t));
    for (size_t w = 0; w < c->nwords; w++) {
        uint64_t word = c->key[w];
        if (w == c->nwords - 1 && c->n % 64)
            word &= mask_below((unsigned)(c->n % 64));
        while (word) {
            size_t x = w * 64 + (size_t)__builtin_ctzll(word);
            word &= word - 1;
            bit_set1(p->copy, p->pos[x]);
        }
    }
}

/* Derive the seeded structure of pass i (stream i of the seed). */
static int build_pass(qkd_cascade *c, size_t i, const uint8_t *seed)
{
    struct pass *p = &c->passes[i];
    qkd_prng g;
    if (p->kind == QKD_CASCADE_PASS_CONTIGUOUS)
        return QKD_OK;
    if (qkd_prng_init(&g, seed, QKD_PRNG_SEED_BYTES, (uint64_t)i) != QKD_OK)
        return QKD_EINVAL;
    if (p->kind == QKD_CASCADE_PASS_SHUFFLED) {
        advise_huge(p->pos, (size_t)c->n * sizeof(uint32_t));
        qkd_prng_permutation(&g, p->pos, c->n);
        if (p->perm) {
            /* the inverse map, a scatter: prefetch the line written PERM_AHEAD positions later */
            enum { PERM_AHEAD = 32 };
            advise_huge(p->perm, (size_t)c->n * sizeof(uint32_t));
            for (size_t x = 0; x < c->n; x++) {
                if (x + PERM_AHEAD < c->n)
                    __builtin_prefetch(&p->perm[p->pos[x + PERM_AHEAD]], 1);
                p->perm[p->pos[x]] = (uint32_t)x;
            }
        }
        if (c->role == QKD_CASCADE_ALICE)
            permute_key(c, p);
        return QKD_OK;
    }
    /* HALVES: each key bit joins the first half with probability 1/2. */
    for (size_t w = 0; w < c->nwords; w++)
        p->mask[w] = qkd_prng_next(&g);
    if (c->n % 64)
        p->mask[c->nwords - 1] &= mask_below((unsigned)(c->n % 64));
    uint32_t count = 0;
    for (size_t w = 0; w < c->nwords; w++) {
        p->rank[w] = count;
        count += (uint32_t)popcount64(p->mask[w]);
    }
    p->rank[c->nwords] = count;
    p->half0 = count;
    return QKD_OK;
}

int qkd_cascade_new(qkd_cascade **out, int role, uint64_t *key, size_t key_words, size_t n_bits,
                    const uint8_t *seed, size_t seed_len, const uint32_t *pass_kind,
                    const uint32_t *pass_block_bits, size_t npasses)
{
    if (out == NULL)
        return QKD_EINVAL;
    *out = NULL;
    if ((role != QKD_CASCADE_ALICE && role != QKD_CASCADE_BOB) || key == NULL || seed == NULL ||
        pass_kind == NULL || pass_block_bits == NULL)
        return QKD_EINVAL;
    if (n_bits == 0 || n_bits > QKD_CASCADE_MAX_BITS || seed_len != QKD_PRNG_SEED_BYTES || npasses == 0 ||
        npasses > QKD_CASCADE_MAX_PASSES)
        return QKD_EINVAL;
    if (key_words < qkd_words_for_bits(n_bits))
        return QKD_ERANGE;
    qkd_cascade *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return QKD_ENOMEM;
    c->role = role;
    c->key = key;
    c->n = n_bits;
    c->nwords = qkd_words_for_bits(n_bits);
    c->npasses = npasses;
    uint64_t total = 0;
    for (size_t i = 0; i < npasses; i++) {
        struct pass *p = &c->passes[i];
        p->kind = pass_kind[i];
        p->block_bits = pass_block_bits[i];
        p->block_base = (size_t)total;
        uint64_t longest;
        if (p->kind == QKD_CASCADE_PASS_HALVES) {
            p->nblocks = 2;
            longest = n_bits; /* a half can, in principle, hold every bit */
        } else if (p->kind == QKD_CASCADE_PASS_CONTIGUOUS || p->kind == QKD_CASCADE_PASS_SHUFFLED) {
            if (p->block_bits == 0) {
                free(c);
                return QKD_EINVAL;
            }
            p->nblocks = (n_bits + p->block_bits - 1) / p->block_bits;
            longest = p->block_bits < n_bits ? p->block_bits : n_bits;
        } else {
            free(c);
            return QKD_EINVAL;
        }
        p->nodes_per_block = 2 * next_pow2(longest ? longest : 1);
        total += p->nblocks;
    }
    if (total > UINT32_MAX) {
        free(c);
        return QKD_EINVAL;
    }
    c->total_blocks = (size_t)total;
    struct arena a = {0};
    layout(c, &a);
    if (a.overflow) {
        free(c);
        return QKD_ENOMEM;
    }
    c->arena = calloc(1, a.used ? a.used : 1);
    if (c->arena == NULL) {
        free(c);
        return QKD_ENOMEM;
    }
    a = (struct arena){.base = c->arena};
    layout(c, &a);
    for (size_t i = 0; i < npasses; i++) {
        int rc = build_pass(c, i, seed);
        if (rc != QKD_OK) {
            qkd_cascade_free(c);
            return rc;
        }
    }
    c->lookahead_levels = 1;
    if (role == QKD_CASCADE_BOB) {
        c->nfree = c->total_blocks;
        for (size_t s = 0; s < c->total_blocks; s++)
            c->free_slots[s] = (uint32_t)(c->total_blocks - 1 - s);
    }
    *out = c;
    return QKD_OK;
}

void qkd_cascade_free(qkd_cascade *c)
{
    if (c == NULL)
        return;
    free(c->arena);
    free(c);
}

int64_t qkd_cascade_top_blocks(const qkd_cascade *c)
{
    return c == NULL ? QKD_EINVAL : (int64_t)c->total_blocks;
}

int64_t qkd_cascade_parities_bytes(size_t count)
{
    if (count > UINT32_MAX)
        return QKD_ERANGE;
    return 4 + (int64_t)((count + 7) / 8);
}

int qkd_cascade_get_stats(const qkd_cascade *c, qkd_cascade_stats *out)
{
    if (c == NULL || out == NULL)
        return QKD_EINVAL;
    *out = c->stats;
    out->passes_started = (uint32_t)c->started;
    return QKD_OK;
}

/* ---- Alice ------------------------------------------------------------------------------------ */

int64_t qkd_cascade_alice_top_parities(qkd_cascade *c, uint8_t *out, size_t out_len)
{
    if (c == NULL || c->role != QKD_CASCADE_ALICE || out == NULL)
        return QKD_EINVAL;
    int64_t need = qkd_cascade_parities_bytes(c->total_blocks);
    if (need < 0)
        return need;
    if (out_len < (size_t)need)
        return QKD_ENOMEM;
    memset(out, 0, (size_t)need);
    wr_le32(out, (uint32_t)c->total_blocks);
    uint8_t *bits = out + 4;
    for (size_t i = 0; i < c->npasses; i++) {
        const struct pass *p = &c->passes[i];
        for (size_t b = 0; b < p->nblocks; b++) {
            uint32_t lo, hi;
            block_range(c, p, b, &lo, &hi);
            size_t g = p->block_base + b;
            if (lo < hi && pass_parity(c, p, c->key, lo, hi))
                bits[g >> 3] |= (uint8_t)(1u << (g & 7));
        }
    }
    c->stats.disclosed_bits += c->total_blocks;
    return need;
}

int64_t qkd_cascade_alice_answer(qkd_cascade *c, const uint8_t *questions, size_t questions_len,
                                 uint8_t *out, size_t out_len)
{
    if (c == NULL || c->role != QKD_CASCADE_ALICE || questions == NULL || out == NULL)
        return QKD_EINVAL;
    if (questions_len < 4)
        return QKD_EPROTO;
    uint32_t count = rd_le32(questions);
    if (count > (questions_len - 4) / QKD_CASCADE_QUESTION_BYTES ||
        questions_len != 4 + (size_t)count * QKD_CASCADE_QUESTION_BYTES)
        return QKD_EPROTO;
    int64_t need = qkd_cascade_parities_bytes(count);
    if (out_len < (size_t)need)
        return QKD_ENOMEM;
    /* Validate every question before answering any. */
    const uint8_t *q = questions + 4;
    for (uint32_t i = 0; i < count; i++, q += QKD_CASCADE_QUESTION_BYTES) {
        uint64_t start = rd_le32(q + 1), length = rd_le32(q + 5);
        if (q[0] >= c->npasses || length == 0 || start + length > c->n)
            return QKD_EPROTO;
    }
    memset(out, 0, (size_t)need);
    wr_le32(out, count);
    q = questions + 4;
    for (uint32_t i = 0; i < count; i++, q += QKD_CASCADE_QUESTION_BYTES) {
        uint32_t start = rd_le32(q + 1), length = rd_le32(q + 5);
        if (pass_parity(c, &c->passes[q[0]], c->key, start, start + length))
            out[4 + (i >> 3)] |= (uint8_t)(1u << (i & 7));
    }
    c->stats.disclosed_bits += count;
    c->stats.question_rounds++;
    return need;
}

/* ---- Bob -------------------------------------------------------------------------------------- */

static void push_pending(qkd_cascade *c, size_t g)
{
    if (bit_get(c->pending_bit, g))
        return;
    bit_set1(c->pending_bit, g);
    c->pending[c->npending++] = (uint32_t)g;
}

/* Bob corrects key bit x; every started pass sees the parity of the block holding x change. */
static void flip(qkd_cascade *c, size_t x)
{
    /* Every flip corrects a bit that differs from Alice's, so no bit flips twice unless Alice's
     * parities contradict each other (a corrupted or hostile peer); stop rather than loop. */
    if (bit_get(c->flipped, x)) {
        c->inconsistent = 1;
        return;
    }
    bit_set1(c->flipped, x);
    qkd_bit_flip(c->key, x);
    c->stats.corrected_bits++;
    for (size_t i = 0; i < c->started; i++) {
        struct pass *p = &c->passes[i];
        uint32_t j = coord_of(p, x);
        if (p->kind == QKD_CASCADE_PASS_SHUFFLED)
            bit_toggle(p->copy, j);
        size_t g = p->block_base + block_of_coord(p, j);
        bit_toggle(c->mismatch, g);
        if (bit_get(c->searching, g)) {
            struct search *s = &c->slots[c->search_of[g]];
            if (j >= s->lo && j < s->hi) {
                s->mis ^= 1;
                s->ready = 0; /* resolve it again */
            }
        } else if (bit_get(c->mismatch, g) || (p->kind != QKD_CASCADE_PASS_HALVES && bit_get(c->visited, g))) {
            push_pending(c, g); /* odd again, or an even block whose revealed sub-blocks may now be odd */
        }
    }
}

static void end_search(qkd_cascade *c, struct search *s)
{
    size_t g = c->passes[s->pass].block_base + s->block;
    s->live = 0;
    bit_clear(c->searching, g);
    if (bit_get(c->mismatch, g) || c->passes[s->pass].kind != QKD_CASCADE_PASS_HALVES)
        push_pending(c, g);
}

/* Narrow s to the half with odd mismatch, given Alice's parity of its left half. */
static void descend(qkd_cascade *c, struct search *s, int alice_left)
{
    const struct pass *p = &c->passes[s->pass];
    uint32_t mid = s->lo + (s->hi - s->lo + 1) / 2;
    int bob_left = pass_parity(c, p, c->key, s->lo, mid);
    if (bob_left != alice_left) {
        s->hi = mid;
        s->node = 2 * s->node;
        s->pa = (uint8_t)alice_left;
    } else {
        s->lo = mid;
        s->node = 2 * s->node + 1;
        s->pa ^= (uint8_t)alice_left;
    }
    s->mis = 1;
}

/* Advance s as far as known parities allow; leaves it asking (live) or ended. */
static void resolve(qkd_cascade *c, struct search *s)
{
    const struct pass *p = &c->passes[s->pass];
    for (;;) {
        if (!s->mis) {
            end_search(c, s);
            return;
        }
        if (s->hi - s->lo == 1) {
            flip(c, original_of(c, p, s->lo)); /* toggles s->mis back to 0 */
            end_search(c, s);
            return;
        }
        uint64_t left = (uint64_t)s->block * p->nodes_per_block + 2 * (uint64_t)s->node;
        if (bit_get(p->known, left)) {
            descend(c, s, bit_get(p->value, left));
            continue;
        }
        s->ready = 1;
        return; /* left child unknown: next_questions asks */
    }
}

static size_t pass_of_block(const qkd_cascade *c, size_t g)
{
    size_t i = c->started - 1;
    while (c->passes[i].block_base > g)
        i--;
    return i;
}

/* In an even block, find a node of the halving tree whose parity Alice has revealed and whose
 * mismatch is odd: flips since it was revealed can leave one behind even though the block as a
 * whole is even. Searching from there finds an error with no new block parity (it uses all known
 * parities, as block parity inference does, Martinez-Mateo et al., arXiv:1407.3257, sec. 4). */
static int find_odd_node(const qkd_cascade *c, const struct pass *p, size_t b, struct search *out)
{
    struct tree_walk {
        uint32_t node, lo, hi;
        uint8_t parity;
    } stack[2 * 33];
    size_t top = 0;
    uint32_t lo, hi;
    block_range(c, p, b, &lo, &hi);
    uint64_t base = (uint64_t)b * p->nodes_per_block;
    if (hi - lo >= 2 && bit_get(p->known, base + 2)) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        stack[top++] = (struct tree_walk){3, mid, hi, (uint8_t)bit_get(p->value, base + 3)};
        stack[top++] = (struct tree_walk){2, lo, mid, (uint8_t)bit_get(p->value, base + 2)};
    }
    while (top > 0) {
        struct tree_walk t = stack[--top];
        if (pass_parity(c, p, c->key, t.lo, t.hi) != t.parity) {
            out->node = t.node;
            out->lo = t.lo;
            out->hi = t.hi;
            out->pa = t.parity;
            return 1;
        }
        uint64_t left = base + 2 * (uint64_t)t.node;
        if (t.hi - t.lo >= 2 && bit_get(p->known, left)) {
            uint32_t mid = t.lo + (t.hi - t.lo + 1) / 2;
            stack[top++] = (struct tree_walk){2 * t.node + 1, mid, t.hi, (uint8_t)bit_get(p->value, left + 1)};
            stack[top++] = (struct tree_walk){2 * t.node, t.lo, mid, (uint8_t)bit_get(p->value, left)};
        }
    }
    return 0;
}

static void start_pending(qkd_cascade *c)
{
    while (c->npending > 0) {
        size_t g = c->pending[--c->npending];
        bit_clear(c->pending_bit, g);
        if (bit_get(c->searching, g))
            continue;
        size_t i = pass_of_block(c, g);
        const struct pass *p = &c->passes[i];
        size_t b = g - p->block_base;
        struct search found;
        if (bit_get(c->mismatch, g)) {
            block_range(c, p, b, &found.lo, &found.hi);
            found.node = 1;
            found.pa = (uint8_t)bit_get(c->alice_top, g);
        } else if (p->kind == QKD_CASCADE_PASS_HALVES || !bit_get(c->visited, g) || !find_odd_node(c, p, b, &found)) {
            continue;
        }
        uint32_t slot = c->free_slots[--c->nfree];
        struct search *s = &c->slots[slot];
        *s = found;
        s->pass = (uint8_t)i;
        s->block = (uint32_t)b;
        s->mis = 1;
        s->asked = 0;
        s->ready = 0;
        s->live = 1;
        bit_set1(c->searching, g);
        bit_set1(c->visited, g);
        c->search_of[g] = slot;
        c->active[c->nactive++] = slot;
    }
}

/* Run every search until each either asks a question or ends, following all cascades. */
static void settle(qkd_cascade *c)
{
    for (;;) {
        start_pending(c);
        uint64_t flips_before = c->stats.corrected_bits;
        for (size_t k = 0; k < c->nactive; k++) {
            struct search *s = &c->slots[c->active[k]];
            if (s->live && !s->ready)
                resolve(c, s);
        }
        size_t kept = 0;
        for (size_t k = 0; k < c->nactive; k++) {
            uint32_t slot = c->active[k];
            if (c->slots[slot].live)
                c->active[kept++] = slot;
            else
                c->free_slots[c->nfree++] = slot;
        }
        c->nactive = kept;
        if (c->inconsistent)
            return;
        if (c->stats.corrected_bits == flips_before && c->npending == 0)
            return;
    }
}

static void begin_pass(qkd_cascade *c, size_t i)
{
    struct pass *p = &c->passes[i];
    if (p->kind == QKD_CASCADE_PASS_SHUFFLED)
        permute_key(c, p);
    c->started = i + 1;
    for (size_t b = 0; b < p->nblocks; b++) {
        uint32_t lo, hi;
        block_range(c, p, b, &lo, &hi);
        size_t g = p->block_base + b;
        int bob = lo < hi ? pass_parity(c, p, c->key, lo, hi) : 0;
        if (bob != bit_get(c->alice_top, g)) {
            bit_set1(c->mismatch, g);
            push_pending(c, g);
        }
    }
}

int qkd_cascade_bob_set_top_parities(qkd_cascade *c, const uint8_t *payload, size_t payload_len)
{
    if (c == NULL || c->role != QKD_CASCADE_BOB || payload == NULL)
        return QKD_EINVAL;
    if (c->have_top)
        return QKD_EPROTO;
    if (payload_len < 4 || rd_le32(payload) != c->total_blocks ||
        (int64_t)payload_len != qkd_cascade_parities_bytes(c->total_blocks))
        return QKD_EPROTO;
    size_t count = c->total_blocks;
    if (count % 8 && (payload[4 + count / 8] >> (count % 8)) != 0)
        return QKD_EPROTO; /* padding bits must be zero */
    for (size_t g = 0; g < count; g++)
        if ((payload[4 + (g >> 3)] >> (g & 7)) & 1u)
            bit_set1(c->alice_top, g);
    c->have_top = 1;
    c->stats.disclosed_bits += count;
    return QKD_OK;
}

/* Questions per round. When few searches remain, the rounds rather than the parities are the cost;
 * Bob may then let each search ask for `lookahead_levels` levels of its halving tree at once
 * (2^levels - 1 parities for that many rounds of descent). Off (one level) unless Bob asks for it. */
#define TREE_QUEUE ((1u << QKD_CASCADE_MAX_LOOKAHEAD) - 1)

static size_t max_questions(const qkd_cascade *c)
{
    size_t few = (size_t)QKD_CASCADE_MAX_FEW_SEARCHES * TREE_QUEUE;
    return c->total_blocks > few ? c->total_blocks : few;
}

int64_t qkd_cascade_question_capacity_bytes(const qkd_cascade *c)
{
    if (c == NULL)
        return QKD_EINVAL;
    return 4 + (int64_t)max_questions(c) * QKD_CASCADE_QUESTION_BYTES;
}

int qkd_cascade_bob_set_lookahead(qkd_cascade *c, uint32_t few_searches, uint32_t levels)
{
    if (c == NULL || c->role != QKD_CASCADE_BOB || few_searches > QKD_CASCADE_MAX_FEW_SEARCHES || levels < 1 ||
        levels > QKD_CASCADE_MAX_LOOKAHEAD)
        return QKD_EINVAL;
    c->few_searches = few_searches;
    c->lookahead_levels = levels;
    return QKD_OK;
}

struct tree_node {
    uint32_t node, lo, hi;
    uint8_t depth, parity;
};

/* Walk the top `levels` levels of s's halving tree breadth first, in the same order when asking and
 * when taking answers. Asking (answers == NULL): write a question for every node whose left child's
 * parity is unknown. Answering: record those parities (and, by difference, the right child's). */
static size_t walk_tree(qkd_cascade *c, const struct search *s, unsigned levels, uint8_t *questions,
                        const uint8_t *answers, size_t answer_index, size_t answer_count)
{
    const struct pass *p = &c->passes[s->pass];
    struct tree_node queue[TREE_QUEUE];
    size_t head = 0, tail = 0, count = 0;
    queue[tail++] = (struct tree_node){.node = s->node, .lo = s->lo, .hi = s->hi, .depth = 0, .parity = s->pa};
    while (head < tail) {
        struct tree_node t = queue[head++];
        if (t.hi - t.lo < 2)
            continue;
        uint32_t mid = t.lo + (t.hi - t.lo + 1) / 2;
        uint64_t left = (uint64_t)s->block * p->nodes_per_block + 2 * (uint64_t)t.node;
        if (!bit_get(p->known, left)) {
            if (answers == NULL) {
                uint8_t *q = questions + (size_t)count * QKD_CASCADE_QUESTION_BYTES;
                q[0] = s->pass;
                wr_le32(q + 1, t.lo);
                wr_le32(q + 5, mid - t.lo);
            } else {
                size_t k = answer_index + count;
                if (k >= answer_count)
                    return count + 1; /* more questions than were asked: caller reports EPROTO */
                int answer = (answers[k >> 3] >> (k & 7)) & 1;
                bit_set1(p->known, left);
                bit_set1(p->known, left + 1);
                if (answer)
                    bit_set1(p->value, left);
                if (answer ^ t.parity)
                    bit_set1(p->value, left + 1);
            }
            count++;
        }
        if (t.depth + 1u < levels) {
            /* Children's parities are known once this node's left child is (asked above or cached). */
            uint8_t pl = (uint8_t)bit_get(p->value, left), pr = (uint8_t)bit_get(p->value, left + 1);
            queue[tail++] = (struct tree_node){2 * t.node, t.lo, mid, (uint8_t)(t.depth + 1), pl};
            queue[tail++] = (struct tree_node){2 * t.node + 1, mid, t.hi, (uint8_t)(t.depth + 1), pr};
        }
    }
    return count;
}

int64_t qkd_cascade_bob_next_questions(qkd_cascade *c, uint8_t *out, size_t out_len)
{
    if (c == NULL || c->role != QKD_CASCADE_BOB || out == NULL)
        return QKD_EINVAL;
    if (!c->have_top || c->outstanding || c->inconsistent)
        return QKD_EPROTO;
    for (;;) {
        settle(c);
        if (c->inconsistent)
            return QKD_EPROTO;
        if (c->nactive > 0)
            break;
        if (c->started == c->npasses)
            return 0; /* every pass done: Bob's key is reconciled */
        begin_pass(c, c->started);
    }
    unsigned levels = c->nactive <= c->few_searches ? c->lookahead_levels : 1;
    if (out_len < 4 + max_questions(c) * QKD_CASCADE_QUESTION_BYTES)
        return QKD_ENOMEM;
    size_t count = 0;
    for (size_t k = 0; k < c->nactive; k++) {
        struct search *s = &c->slots[c->active[k]];
        s->asked = (uint8_t)levels;
        count += walk_tree(c, s, levels, out + 4 + count * QKD_CASCADE_QUESTION_BYTES, NULL, 0, 0);
    }
    wr_le32(out, (uint32_t)count);
    c->outstanding = count;
    c->stats.question_rounds++;
    return (int64_t)(4 + count * QKD_CASCADE_QUESTION_BYTES);
}

int qkd_cascade_bob_apply_answers(qkd_cascade *c, const uint8_t *payload, size_t payload_len)
{
    if (c == NULL || c->role != QKD_CASCADE_BOB || payload == NULL)
        return QKD_EINVAL;
    if (c->outstanding == 0)
        return QKD_EPROTO;
    size_t count = c->outstanding;
    if (payload_len < 4 || rd_le32(payload) != count || (int64_t)payload_len != qkd_cascade_parities_bytes(count))
        return QKD_EPROTO;
    if (count % 8 && (payload[4 + count / 8] >> (count % 8)) != 0)
        return QKD_EPROTO;
    /* Record the answers; the searches descend through them in the next settle(). */
    size_t used = 0;
    for (size_t k = 0; k < c->nactive; k++) {
        struct search *s = &c->slots[c->active[k]];
        used += walk_tree(c, s, s->asked, NULL, payload + 4, used, count);
        s->asked = 0;
        s->ready = 0;
    }
    c->outstanding = 0;
    c->stats.disclosed_bits += count;
    return used == count ? QKD_OK : QKD_EPROTO;
}
