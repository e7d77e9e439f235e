/* Fuzz target for the C core's record scanner (native/format.c) and crc32c.
 *
 * One input = the bytes of a segment file. Exercised exactly as aurora_log/local/log.py does at
 * open and in Log.scan: the segment header check, the batch scanner in chunks (cap 1, 7,
 * 4096 and 0), the zero-tail checks, and the durable-evidence search at the first bad
 * offset and at a few other offsets. The input is copied into a buffer
 * of exactly its size, so ASan sees any read past the end. It also checks invariants the
 * Python layer relies on (records inside the buffer, LSNs consecutive, the hardware and
 * table crc32c equal) and abort()s when one breaks.
 *
 * Built two ways by tests/fuzz/build.sh:
 *   scan_fuzz         gcc or clang + ASan/UBSan; reads a stream of inputs on stdin, each
 *                     as <u32 little-endian length><bytes> (persistent batch mode), or the
 *                     files named on the command line; prints "ok <n>".
 *   scan_libfuzzer    clang -fsanitize=fuzzer,address,undefined (when clang is present).
 */
#include "aurora.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "invariant failed: %s (line %d)\n", #c, \
                                          __LINE__); abort(); } } while (0)

static void scan_all(const uint8_t *buf, size_t n, uint64_t first_lsn, uint32_t max_record,
                     size_t cap)
{
    au_scan s;
    memset(&s, 0, sizeof s);
    s.pos = AU_SEG_HDR;
    s.next_lsn = first_lsn;
    s.limit = n;
    s.max_record = max_record;
    au_rec recs[4096];
    uint64_t expect = first_lsn;
    for (int rounds = 0;; rounds++) {
        size_t k = au_scan_next(buf, &s, cap ? recs : NULL, cap);
        CHECK(k <= cap);
        for (size_t i = 0; i < k; i++) {
            CHECK(recs[i].lsn == expect);
            expect++;
            CHECK(recs[i].type >= 1 && recs[i].type <= 255);
            CHECK(recs[i].off >= AU_SEG_HDR + AU_BATCH_HDR);
            CHECK(recs[i].off <= n && recs[i].len <= n - recs[i].off);
            CHECK(recs[i].len <= max_record);
        }
        if (s.status != AU_SCAN_MORE)
            break;
        CHECK(rounds < 100000000);
    }
    CHECK(s.status == AU_SCAN_END || s.status == AU_SCAN_BAD);
    if (s.status == AU_SCAN_BAD) {
        CHECK(s.bad_off >= AU_SEG_HDR && s.bad_off <= n);
        CHECK(au_reason(s.reason) != NULL);
        (void)au_find_durable_evidence(buf, n, s.bad_off, max_record);
    } else {
        int64_t z = au_first_nonzero(buf, s.pos < n ? s.pos : n, n);
        CHECK(z == -1 || ((uint64_t)z >= s.pos && (uint64_t)z < n));
        int64_t l = au_last_nonzero(buf, s.pos < n ? s.pos : n, n);
        CHECK((z == -1) == (l == -1));
    }
    if (cap)
        CHECK(s.next_lsn == expect);
}

static uint64_t get_u16(const uint8_t *p) { return (uint64_t)p[0] | (uint64_t)p[1] << 8; }

static void one(const uint8_t *data, size_t n)
{
    /* exactly-sized copy: any over-read is an ASan report */
    uint8_t *buf = malloc(n ? n : 1);
    CHECK(buf != NULL);
    memcpy(buf, data, n);

    uint64_t first = 1, size = 0;
    uint32_t seg_limit = 0;
    int r = au_segment_header_check(buf, n, &first, &size, &seg_limit);
    CHECK(r != 0 || (seg_limit >= 1 && seg_limit <= AU_MAX_RECORD));
    CHECK(au_reason(r) != NULL);
    if (r != 0)
        first = 1 + (n ? buf[0] : 0);  /* scan anyway: the scanner must survive any header */
    uint32_t max_record = 16u << 20;
    if (n > 40)
        max_record = 1 + (buf[n / 2] << 8 | buf[n / 3]);  /* small limits too */
    scan_all(buf, n, first, 16u << 20, 4096);
    scan_all(buf, n, first, max_record, 7);
    scan_all(buf, n, first, 16u << 20, 1);
    scan_all(buf, n, first, 16u << 20, 0);
    /* the evidence search from a few places (it is O(n) each) */
    uint64_t xs[5] = {0, AU_SEG_HDR, n / 2, n ? n - 1 : 0, n > 8 ? get_u16(buf + 2) % n : 0};
    for (int i = 0; i < 5; i++)
        (void)au_find_durable_evidence(buf, n, xs[i], 1u << 20);
    CHECK(au_crc32c_sw(0, buf, n) == au_crc32c_hw(0, buf, n));
    if (n > 3)
        CHECK(au_crc32c_sw(7, buf + 3, n - 3) == au_crc32c_hw(7, buf + 3, n - 3));
    CHECK(au_crc_unmask(au_crc_mask((uint32_t)n)) == (uint32_t)n);
    free(buf);
}

#ifdef LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(data, size);
    return 0;
}
#else
static uint8_t *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    uint8_t *p = malloc(cap);
    size_t k;
    while (p && (k = fread(p + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            uint8_t *q = realloc(p, cap *= 2);
            if (!q) {
                free(p);
                return NULL;
            }
            p = q;
        }
    }
    *len = n;
    return p;
}

int main(int argc, char **argv)
{
    size_t count = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            FILE *f = fopen(argv[i], "rb");
            if (!f) {
                perror(argv[i]);
                return 2;
            }
            size_t n;
            uint8_t *d = read_all(f, &n);
            fclose(f);
            CHECK(d != NULL);
            one(d, n);
            free(d);
            count++;
        }
    } else {
        size_t n;
        uint8_t *d = read_all(stdin, &n);
        CHECK(d != NULL);
        size_t p = 0;
        while (n - p >= 4) {
            uint32_t len = (uint32_t)d[p] | (uint32_t)d[p + 1] << 8 | (uint32_t)d[p + 2] << 16 |
                           (uint32_t)d[p + 3] << 24;
            p += 4;
            CHECK(len <= n - p);
            one(d + p, len);
            p += len;
            count++;
        }
        free(d);
    }
    printf("ok %zu\n", count);
    return 0;
}
#endif
