/* The id index of a snapshot's never-touched pending jobs (aurora_log/local/table.py,
 * SnapshotBase): an open-addressing hash table of u32 ranks over ids stored at a fixed
 * stride in the snapshot content (16 raw bytes per UUID id, or W bytes + "\n"). It stands
 * in for a Python dict of a million id strings: 5 bytes per slot (2 to 4 slots per id)
 * instead of ~150 bytes per id, built in milliseconds, and the ids are not copied. */
#include "aurora.h"

#include <string.h>

#define EMPTY 0xFFFFFFFFu

static uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Every byte counts (UUIDv7-style ids share their leading timestamp bytes). */
static uint64_t hash_id(const uint8_t *p, uint32_t width)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ width;
    uint32_t i = 0;
    for (; i + 8 <= width; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        h = mix(h ^ v);
    }
    if (i < width) {
        uint64_t v = 0;
        memcpy(&v, p + i, width - i);
        h = mix(h ^ v ^ ((uint64_t)(width - i) << 56));
    }
    return h;
}

/* The table's layout: mask + 1 u32 slots, then mask + 1 tag bytes (the hash's top byte),
 * so that a probe compares an id (a cache miss into the ids) only when the tags agree. */
int64_t au_idx_build(const uint8_t *ids, uint64_t n, uint32_t stride, uint32_t width,
                     uint32_t *table, uint64_t mask)
{
    if (n >= EMPTY || mask + 1 < 2 * n)
        return -2;
    uint8_t *tags = (uint8_t *)(table + mask + 1);
    memset(table, 0xFF, (size_t)(mask + 1) * sizeof(uint32_t));
    memset(tags, 0, (size_t)(mask + 1));
    uint64_t hs[16];
    for (uint64_t k = 0; k < n; k++) {
        /* hashes 16 ids ahead and prefetches their slots: the inserts' cache misses
         * overlap (the inserts themselves stay in rank order) */
        if ((k & 15) == 0) {
            for (uint64_t j = k; j < k + 16 && j < n; j++) {
                hs[j & 15] = hash_id(ids + j * stride, width);
                __builtin_prefetch(table + (hs[j & 15] & mask), 1);
                __builtin_prefetch(tags + (hs[j & 15] & mask), 1);
            }
        }
        const uint8_t *id = ids + k * stride;
        uint64_t h = hs[k & 15], s = h & mask;
        uint8_t tag = (uint8_t)(h >> 56);
        for (;;) {
            uint32_t r = table[s];
            if (r == EMPTY) {
                table[s] = (uint32_t)k;
                tags[s] = tag;
                break;
            }
            if (tags[s] == tag && memcmp(ids + (uint64_t)r * stride, id, width) == 0)
                return (int64_t)k;          /* a duplicate id */
            s = (s + 1) & mask;
        }
    }
    return -1;
}

/* The probe of au_idx_find for a key whose hash is known. */
static int64_t probe(const uint8_t *ids, uint32_t stride, uint32_t width,
                     const uint32_t *table, uint64_t mask, const uint8_t *key, uint64_t h)
{
    const uint8_t *tags = (const uint8_t *)(table + mask + 1);
    uint64_t s = h & mask;
    uint8_t tag = (uint8_t)(h >> 56);
    for (;;) {
        uint32_t r = table[s];
        if (r == EMPTY)
            return -1;
        if (tags[s] == tag && memcmp(ids + (uint64_t)r * stride, key, width) == 0)
            return r;
        s = (s + 1) & mask;
    }
}

int64_t au_idx_find(const uint8_t *ids, uint32_t stride, uint32_t width,
                    const uint32_t *table, uint64_t mask, const uint8_t *key)
{
    return probe(ids, stride, width, table, mask, key, hash_id(key, width));
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;                              /* uppercase is not canonical */
}

int au_uuid_parse(const char *s, size_t len, uint8_t *out)
{
    if (len != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
        return -1;
    int j = 0;
    for (size_t i = 0; i < 36; i += 2) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            i++;
        int hi = hexval((uint8_t)s[i]), lo = hexval((uint8_t)s[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[j++] = (uint8_t)(hi << 4 | lo);
    }
    return j == 16 ? 0 : -1;
}

int64_t au_idx_find_uuid(const uint8_t *ids, const uint32_t *table, uint64_t mask,
                         const char *s, size_t len)
{
    uint8_t key[16];
    if (au_uuid_parse(s, len, key))
        return -1;
    return au_idx_find(ids, 16, 16, table, mask, key);
}

/* Lines are looked up GROUP at a time: every key of a group is parsed and hashed and its
 * slot and tag prefetched before the first is probed, so the group's cache misses into
 * the table (megabytes, one random slot per key) overlap instead of coming one after
 * another (a reopen checks every replayed enqueue against the snapshot's ids). */
#define GROUP 16

int64_t au_idx_find_any_uuid(const uint8_t *ids, const uint32_t *table, uint64_t mask,
                             const char *lines, size_t len)
{
    const uint8_t *tags = (const uint8_t *)(table + mask + 1);
    uint8_t keys[GROUP][16];
    uint64_t hs[GROUP];
    int ok[GROUP];
    size_t p = 0;
    int64_t line = 0;
    while (p < len) {
        int64_t first = line;
        int g = 0;
        for (; g < GROUP && p < len; g++) {
            const char *nl = memchr(lines + p, '\n', len - p);
            size_t e = nl ? (size_t)(nl - lines) : len;
            ok[g] = au_uuid_parse(lines + p, e - p, keys[g]) == 0;
            if (ok[g]) {
                hs[g] = hash_id(keys[g], 16);
                __builtin_prefetch(table + (hs[g] & mask));
                __builtin_prefetch(tags + (hs[g] & mask));
            }
            p = e + 1;
            line++;
        }
        for (int i = 0; i < g; i++)     /* in order: the first line found is the answer */
            if (ok[i] && probe(ids, 16, 16, table, mask, keys[i], hs[i]) >= 0)
                return first + i;
    }
    return -1;
}
