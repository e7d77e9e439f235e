/* Replay's bulk fold of ENQUEUE records (aurora_log/local/state.py, apply_enqueue_run):
 * a run of consecutive plain ENQUEUE records of one (job_type, queue) pair turned into the
 * job table's blobs, ids and claim-order inputs in one call, so that Python does list-wide
 * operations instead of a dozen bytecode steps per record. The record layout is
 * records.py's (ENQUEUE_HEAD "<BBBxIqqqqqHHHHI", then id, job_type, queue, unique key,
 * payload); the blob head is table.py's JOB_HEAD "<qqqqIIIIBBH". A record the bulk path
 * does not take (anything unusual: a unique key, a non-ASCII id, a value out of range)
 * ends the run and goes through the ordinary per-record fold, which decides. */
#include "aurora.h"

#include <string.h>

#define ENQ_HEAD 60
#define JOB_HEAD 52

static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static int64_t rd64(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }

/* Whether rec is an ENQUEUE the bulk path takes, of the pair key (lt, type+queue bytes)
 * `key` (key NULL: any pair). */
static int plain(const uint8_t *buf, const au_rec *r, const uint8_t *key, uint32_t key_lt,
                 uint32_t key_len)
{
    if (r->type != AU_ENQUEUE_TYPE || r->len < ENQ_HEAD)
        return 0;
    const uint8_t *d = buf + r->off;
    uint8_t ver = d[0], flags = d[1], prio = d[2];
    int64_t tmo = rd64(d + 32), lease = rd64(d + 40);
    uint32_t li = rd16(d + 48), lt = rd16(d + 50), lq = rd16(d + 52), lu = rd16(d + 54);
    uint32_t lp = rd32(d + 56);
    if (ver != 1 || (flags & ~3) || prio < 1 || prio > 4 || lease <= 0 ||
        lease > 0xFFFFFFFFLL || ((flags & 2) && (tmo <= 0 || tmo > 0xFFFFFFFFLL)) ||
        !li || !lt || !lq || lu)
        return 0;
    uint64_t c = (uint64_t)ENQ_HEAD + li + lt + lq;
    if (c + lp != r->len || !lp || d[c] != '{')
        return 0;
    for (uint32_t i = 0; i < li; i++)       /* printable ASCII: split on "\n" safely */
        if (d[ENQ_HEAD + i] < 0x20 || d[ENQ_HEAD + i] > 0x7E)
            return 0;
    if (key && (lt != key_lt || lt + lq != key_len ||
                memcmp(d + ENQ_HEAD + li, key, key_len) != 0))
        return 0;
    return 1;
}

size_t au_enq_run_len(const uint8_t *buf, const au_rec *recs, size_t n)
{
    if (!n || !plain(buf, &recs[0], NULL, 0, 0))
        return 0;
    const uint8_t *d = buf + recs[0].off;
    uint32_t li = rd16(d + 48), lt = rd16(d + 50), lq = rd16(d + 52);
    const uint8_t *key = d + ENQ_HEAD + li;
    size_t m = 1;
    while (m < n && plain(buf, &recs[m], key, lt, lt + lq))
        m++;
    return m;
}

size_t au_enq_run_build(const uint8_t *buf, const au_rec *recs, size_t m, uint32_t pair,
                        int64_t max_due, uint8_t *blobs, uint64_t *blob_ends, uint8_t *ids,
                        uint64_t *ids_len, int64_t *due, int64_t *at, uint8_t *prio,
                        uint64_t *rec_bytes)
{
    uint64_t bo = 0, io = 0, rb = 0;
    for (size_t k = 0; k < m; k++) {
        const uint8_t *d = buf + recs[k].off;
        uint8_t flags = d[1];
        uint32_t maxr = rd32(d + 4);
        int64_t created = rd64(d + 8), t = rd64(d + 16), sched = rd64(d + 24);
        int64_t tmo = (flags & 2) ? rd64(d + 32) : 0, lease = rd64(d + 40);
        uint32_t li = rd16(d + 48), lt = rd16(d + 50), lq = rd16(d + 52);
        uint64_t lsn = recs[k].lsn;
        uint64_t c = (uint64_t)ENQ_HEAD + li + lt + lq;
        uint32_t tail = recs[k].len - (uint32_t)c;
        uint8_t *h = blobs + bo;
        int64_t s = (flags & 1) ? sched : 0;
        uint32_t u32;
        uint16_t u16 = 0;                  /* unique key length: none on this path */
        memcpy(h, &lsn, 8);
        memcpy(h + 8, &t, 8);
        memcpy(h + 16, &created, 8);
        memcpy(h + 24, &s, 8);
        u32 = (uint32_t)tmo; memcpy(h + 32, &u32, 4);
        u32 = (uint32_t)lease; memcpy(h + 36, &u32, 4);
        memcpy(h + 40, &maxr, 4);
        memcpy(h + 44, &pair, 4);
        h[48] = d[2];
        h[49] = flags & 1;
        memcpy(h + 50, &u16, 2);
        memcpy(h + JOB_HEAD, d + c, tail);
        bo += JOB_HEAD + tail;
        blob_ends[k] = bo;
        memcpy(ids + io, d + ENQ_HEAD, li);
        ids[io + li] = '\n';
        io += li + 1;
        if (flags & 1)
            due[k] = sched < 0 ? 0 : sched > max_due ? max_due : sched;
        else
            due[k] = t;
        at[k] = t;
        prio[k] = d[2];
        rb += recs[k].len + AU_REC_HDR;
    }
    *ids_len = io;
    *rec_bytes = rb;
    return m;
}
