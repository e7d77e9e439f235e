/* Segment headers, batch verification and the replay scanner (native/FORMAT.md). */
#include "aurora.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

static const char MAGIC[8] = {'A', 'U', 'R', 'L', 'O', 'G', 'v', '1'};

/* The text of an AU_R_* reason, as CorruptionError and the recovery report show it.
 * Static strings: the caller never frees them. */
const char *au_reason(int r)
{
    switch (r) {
    case AU_R_OK: return "ok";
    case AU_R_SEG_SHORT: return "segment header truncated";
    case AU_R_SEG_MAGIC: return "bad segment magic";
    case AU_R_SEG_CRC: return "segment header checksum mismatch";
    case AU_R_SEG_VERSION: return "unsupported segment version/flags";
    case AU_R_SEG_SIZE: return "bad preallocated size in segment header";
    case AU_R_SHORT_HEADER: return "file ends inside a batch header";
    case AU_R_HDR_CRC: return "batch header checksum mismatch";
    case AU_R_BATCH_LEN: return "bad batch length";
    case AU_R_BATCH_PAST_EOF: return "batch extends past end of file";
    case AU_R_FLAGS: return "unknown batch flags";
    case AU_R_LSN_GAP: return "LSN gap";
    case AU_R_LSN_BACK: return "LSN goes backwards";
    case AU_R_REC_TOO_BIG: return "record length over the maximum";
    case AU_R_REC_PAST_BATCH: return "record extends past its batch";
    case AU_R_REC_TYPE: return "record type 0 (invalid)";
    case AU_R_REC_CRC: return "record checksum mismatch";
    case AU_R_REC_LSN: return "record LSN out of sequence";
    case AU_R_PADDING: return "bad batch padding";
    case AU_R_SEAL_RECORDS: return "SEAL batch carries records";
    case AU_R_TRAILING: return "non-zero bytes after the end of data";
    case AU_R_SEG_LIMIT: return "bad record limit in segment header";
    default: return "unknown reason";
    }
}

/* The 32-byte segment header (FORMAT.md): magic, version (2), flags 0, the record limit
 * the segment is written with (max_record), first LSN, size / 8, and the masked crc of the
 * 28 bytes before it. */
void au_segment_header_make(uint8_t *h, uint64_t first_lsn, uint64_t size,
                            uint32_t max_record)
{
    memcpy(h, MAGIC, 8);
    put32(h + 8, AU_FORMAT_VERSION);
    put32(h + 12, max_record);   /* version 2: the store's limit travels with its segments */
    put64(h + 16, first_lsn);
    put32(h + 24, (uint32_t)(size / 8));
    put32(h + 28, au_crc_mask(au_crc32c(0, h, 28)));
}

/* Verify a segment header: AU_R_OK with *first_lsn, *size and *max_record filled (a
 * version 1 header recorded no limit: AU_MAX_RECORD), or the first reason it fails, outputs
 * untouched. The crc is checked before the version, so damage reads as a crc mismatch, not
 * as an unsupported version. */
int au_segment_header_check(const uint8_t *h, size_t n, uint64_t *first_lsn, uint64_t *size,
                            uint32_t *max_record)
{
    if (n < AU_SEG_HDR)
        return AU_R_SEG_SHORT;
    if (memcmp(h, MAGIC, 8) != 0)
        return AU_R_SEG_MAGIC;
    if (get32(h + 28) != au_crc_mask(au_crc32c(0, h, 28)))
        return AU_R_SEG_CRC;
    uint32_t version = get32(h + 8), limit = get32(h + 12);
    if (version == 1 && limit == 0)       /* version 1: flags, always 0; no limit recorded */
        limit = AU_MAX_RECORD;
    else if (version != 2)
        return AU_R_SEG_VERSION;
    else if (limit == 0 || limit > AU_MAX_RECORD)
        return AU_R_SEG_LIMIT;
    if ((uint64_t)get32(h + 24) * 8 < 2 * AU_SEG_HDR)
        return AU_R_SEG_SIZE;
    *first_lsn = get64(h + 16);
    *size = (uint64_t)get32(h + 24) * 8;
    *max_record = limit;
    return AU_R_OK;
}

/* The masked crc of a batch header: bytes 0-3 and 8-31, the crc field itself left out. */
uint32_t au_batch_hdr_crc(const uint8_t *h)
{
    uint32_t c = au_crc32c(0, h, 4);
    c = au_crc32c(c, h + 8, 24);
    return au_crc_mask(c);
}

/* Fill a 32-byte batch header (FORMAT.md); the crc is computed last, over the rest. */
void au_batch_header(uint8_t *h, uint32_t len, uint64_t first_lsn, uint32_t count,
                     uint32_t flags, uint64_t durable_end)
{
    put32(h, len);
    put64(h + 8, first_lsn);
    put32(h + 16, count);
    put32(h + 20, flags);
    put64(h + 24, durable_end);
    put32(h + 4, au_batch_hdr_crc(h));
}

/* A record's masked crc: type byte, LSN (8 LE bytes), payload. The scanner's own
 * computation, apart from the writer's au_crc32c_frame_copy, so every scan cross-checks
 * what the writer framed. */
uint32_t au_record_crc(uint8_t type, uint64_t lsn, const uint8_t *payload, uint32_t len)
{
    uint8_t pre[9];
    pre[0] = type;
    put64(pre + 1, lsn);
    uint32_t c = au_crc32c(0, pre, 9);
    c = au_crc32c(c, payload, len);
    return au_crc_mask(c);
}

/* Verify the whole batch at `pos` before any of its records is handed out. Returns a
 * reason (0 = valid) and fills the out values only when valid. Never reads at or past
 * `limit`: every length is checked against what is left before it is used (the fuzz test
 * holds it to that under ASan). */
static int verify_batch(const uint8_t *buf, uint64_t limit, uint64_t pos, uint64_t expected,
                        uint32_t max_record, uint32_t *blen, uint32_t *count, uint32_t *flags,
                        uint64_t *durable_end)
{
    if (limit - pos < AU_BATCH_HDR)
        return AU_R_SHORT_HEADER;
    const uint8_t *h = buf + pos;
    uint32_t len = get32(h);
    if (get32(h + 4) != au_batch_hdr_crc(h))
        return AU_R_HDR_CRC;
    if (len < AU_BATCH_HDR || (len & 7) || len > AU_MAX_BATCH)
        return AU_R_BATCH_LEN;
    if (len > limit - pos)
        return AU_R_BATCH_PAST_EOF;
    uint64_t first = get64(h + 8);
    uint32_t n = get32(h + 16);
    uint32_t fl = get32(h + 20);
    if ((fl & ~(AU_FLAG_SEAL | AU_FLAG_NEXT)) || fl == AU_FLAG_NEXT)
        return AU_R_FLAGS;
    if (first > expected)
        return AU_R_LSN_GAP;
    if (first < expected)
        return AU_R_LSN_BACK;
    if ((fl & AU_FLAG_SEAL) && n)
        return AU_R_SEAL_RECORDS;
    uint64_t end = pos + len, p = pos + AU_BATCH_HDR;
    for (uint32_t i = 0; i < n; i++) {
        if (end - p < AU_REC_HDR)
            return AU_R_REC_PAST_BATCH;
        uint32_t rl = get32(buf + p);
        if (rl > max_record)
            return AU_R_REC_TOO_BIG;
        if (end - p - AU_REC_HDR < rl)
            return AU_R_REC_PAST_BATCH;
        uint64_t lsn = get64(buf + p + 8);
        uint8_t type = buf[p + 16];
        if (type == 0)
            return AU_R_REC_TYPE;
        if (get32(buf + p + 4) != au_record_crc(type, lsn, buf + p + AU_REC_HDR, rl))
            return AU_R_REC_CRC;
        if (lsn != first + i)
            return AU_R_REC_LSN;
        p += AU_REC_HDR + rl;
    }
    if (end - p >= 8)
        return AU_R_PADDING;
    for (; p < end; p++)
        if (buf[p])
            return AU_R_PADDING;
    *blen = len;
    *count = n;
    *flags = fl;
    *durable_end = get64(h + 24);
    return AU_R_OK;
}

/* Hand out up to `cap` records from verified batches (cap 0: step over one batch, no
 * records), resuming from *s. A batch is verified whole before its first record goes out,
 * so a caller never sees a record of a bad batch. status: MORE (call again), END (end of
 * written data: the caller checks that every byte after it is zero) or BAD (reason and
 * bad_off set; nothing from that batch returned). */
size_t au_scan_next(const uint8_t *buf, au_scan *s, au_rec *out, size_t cap)
{
    size_t k = 0;
    for (;;) {
        while (s->rec_left && k < cap) {
            uint64_t p = s->rec_pos;
            uint32_t rl = get32(buf + p);
            out[k].lsn = get64(buf + p + 8);
            out[k].type = buf[p + 16];
            out[k].off = p + AU_REC_HDR;
            out[k].len = rl;
            k++;
            s->rec_pos = p + AU_REC_HDR + rl;
            s->rec_left--;
        }
        if (k == cap && cap) {
            s->status = AU_SCAN_MORE;
            return k;
        }
        uint64_t pos = s->pos;
        if (pos >= s->limit) {
            s->status = AU_SCAN_END;
            return k;
        }
        if (s->limit - pos < 4 || get32(buf + pos) == 0) {
            /* end of written data (zeros, or a short file ending in zeros); the caller
             * checks that everything from here is zero */
            s->status = AU_SCAN_END;
            return k;
        }
        uint32_t blen, n, fl;
        uint64_t de;
        int r = verify_batch(buf, s->limit, pos, s->next_lsn, s->max_record, &blen, &n, &fl,
                             &de);
        if (r) {
            s->status = AU_SCAN_BAD;
            s->reason = r;
            s->bad_off = pos;
            return k;
        }
        s->rec_pos = pos + AU_BATCH_HDR;
        s->rec_left = n;
        s->pos = pos + blen;
        s->next_lsn += n;
        s->last_durable_end = de;
        s->last_flags = fl;
        s->batches++;
        if (!cap) {
            s->status = AU_SCAN_MORE;
            return 0;
        }
    }
}

/* The offset of the first non-zero byte in [from, limit), or -1. 8 bytes at a time once
 * aligned (the zero tail of a segment is megabytes). */
int64_t au_first_nonzero(const uint8_t *buf, uint64_t from, uint64_t limit)
{
    uint64_t i = from;
    while (i < limit && (i & 7)) {
        if (buf[i])
            return (int64_t)i;
        i++;
    }
    while (limit - i >= 8) {
        uint64_t v;
        memcpy(&v, buf + i, 8);
        if (v)
            break;
        i += 8;
    }
    for (; i < limit; i++)
        if (buf[i])
            return (int64_t)i;
    return -1;
}

/* The offset of the last non-zero byte in [from, limit), or -1. */
int64_t au_last_nonzero(const uint8_t *buf, uint64_t from, uint64_t limit)
{
    uint64_t i = limit;
    while (i > from) {
        if (buf[i - 1])
            return (int64_t)(i - 1);
        i--;
    }
    return -1;
}

/* Evidence that the bytes at x had been fdatasynced (FORMAT.md, recovery rule 3): a later
 * batch that verifies as a whole (header and every record) with x < durable_end <= its
 * offset, at a position the chain of batch headers reaches from x. Only a header whose
 * crc holds is followed (its batch_len was written by the writer at a batch boundary), so
 * bytes inside a payload, which may look like anything, are never taken for a batch. */
int64_t au_find_durable_evidence(const uint8_t *buf, uint64_t limit, uint64_t x,
                                 uint32_t max_record)
{
    uint64_t pos = x;
    while (pos <= limit && limit - pos >= AU_BATCH_HDR) {
        const uint8_t *h = buf + pos;
        uint32_t len = get32(h);
        if (get32(h + 4) != au_batch_hdr_crc(h) || len < AU_BATCH_HDR || (len & 7) ||
            len > AU_MAX_BATCH || len > limit - pos)
            return -1;
        uint32_t blen, n, fl;
        uint64_t de;
        if (pos > x &&
            verify_batch(buf, limit, pos, get64(h + 8), max_record, &blen, &n, &fl, &de) ==
                AU_R_OK &&
            de > x && de <= pos)
            return (int64_t)pos;
        pos += len;
    }
    return -1;
}

/* Zero-filling ahead (FORMAT.md "Preallocation, rolling, end of data"): a segment gets its
 * full size at creation (ftruncate: the part not yet written is a hole, which reads as
 * zeros), but only its first fill_step + fill_ahead bytes are written as zeros; then every
 * batch that moves the end of data past a multiple of fill_step writes zeros up to
 * fill_ahead bytes beyond that multiple (au_fill_ahead). So an fdatasync lands on blocks
 * an earlier fdatasync already allocated, except about one per fill_step bytes, and the
 * disk holds only the data plus a few MiB, not the whole segment. */
static uint64_t fill_step = AU_FILL_STEP, fill_ahead = AU_FILL_AHEAD;

void au_set_fill_ahead(uint64_t step, uint64_t ahead)
{
    __atomic_store_n(&fill_step, step ? step : AU_FILL_STEP, __ATOMIC_RELAXED);
    __atomic_store_n(&fill_ahead, ahead, __ATOMIC_RELAXED);
}

/* The bytes a new segment (or spare) gets written as zeros at creation: what
 * au_fill_ahead expects to be there when the end of data is at the first batch. */
uint64_t au_fill_initial(void)
{
    return __atomic_load_n(&fill_step, __ATOMIC_RELAXED) +
           __atomic_load_n(&fill_ahead, __ATOMIC_RELAXED);
}

/* a spare is zero-filled from this, and its writeback pushed every SPARE_SYNC_EVERY bytes */
static uint8_t zeros_1m[1 << 20];

/* pwrite zeros over [from, to) of fd. 0 or -errno (a prefix may be written). */
static int write_zeros(int fd, uint64_t from, uint64_t to)
{
    while (from < to) {
        size_t n = to - from > sizeof zeros_1m ? sizeof zeros_1m : (size_t)(to - from);
        int64_t r = au_pwrite_full(fd, zeros_1m, n, (int64_t)from);
        if (r < 0)
            return (int)r;
        from += n;
    }
    return 0;
}

/* After a batch moved the end of data of a segment of `size` bytes from `before` to
 * `after` (offsets; size 0: fstat it when needed): write zeros over [roundup(before) + ahead, roundup(after) + ahead),
 * rounded to fill_step, never below `after` (the batch's own bytes) nor past `size`. By
 * the writer of the batch, still the only one who may write the segment (the exclusive
 * leader; a shared append_mu holder), so nothing else is written there meanwhile; the
 * zeros become durable with the next fdatasync of the segment. Returns the bytes written,
 * or -errno: callers ignore a failure (ENOSPC, EIO: the zeros are not needed, a batch
 * written into a hole is as durable after its fdatasync, only that fdatasync is slower;
 * the batch's own write reports its own errors). */
int64_t au_fill_ahead(int fd, uint64_t before, uint64_t after, uint64_t size)
{
    uint64_t step = __atomic_load_n(&fill_step, __ATOMIC_RELAXED);
    uint64_t ahead = __atomic_load_n(&fill_ahead, __ATOMIC_RELAXED);
    uint64_t a = (before + step - 1) / step * step + ahead;
    uint64_t b = (after + step - 1) / step * step + ahead;
    if (a < after)
        a = after;
    if (a >= b)
        return 0;   /* the common case: no step boundary crossed */
    if (size == 0) {
        int64_t fs = au_file_size(fd);
        if (fs < 0)
            return fs;
        size = (uint64_t)fs;
    }
    if (b > size)
        b = size;
    if (a >= b)
        return 0;
    int r = write_zeros(fd, a, b);
    return r < 0 ? r : (int64_t)(b - a);
}

/* Give a new file of `size` bytes its zeros (FORMAT.md "Preallocation"): `from` is where
 * the zeros start (after a header already written, or 0). A segment no bigger than the
 * initial fill is written whole, as before zero-filling ahead; a bigger one is extended
 * with ftruncate first (the rest is a hole, read as zeros; the caller's fsync makes the
 * size durable) and written up to the initial fill. `sync_every`: fdatasync after each
 * that many bytes (the spare: its writeback does not queue in front of the commits'
 * fdatasyncs), 0 = never. `cancel` (may be NULL) is read between chunks: -ECANCELED. */
static int give_zeros(int fd, uint64_t from, uint64_t size, uint64_t sync_every,
                      const int *cancel)
{
    uint64_t end = size;
    uint64_t initial = au_fill_initial();
    if (size > initial) {
        int r = au_ftruncate(fd, (int64_t)size);
        if (r < 0)
            return r;
        end = initial;
    }
    for (uint64_t off = from; off < end;) {
        if (cancel && __atomic_load_n(cancel, __ATOMIC_RELAXED))
            return -ECANCELED;
        uint64_t next = off + sizeof zeros_1m;
        if (next > end)
            next = end;
        int r = write_zeros(fd, off, next);
        if (r < 0)
            return r;
        off = next;
        if (sync_every && off % sync_every == 0 && off < end && (r = au_fdatasync(fd)) < 0)
            return r;
    }
    return 0;
}

/* Create <wal_dir>/<first_lsn>.seg: write .tmp (O_EXCL; header + zeros as give_zeros),
 * fsync, rename, fsync the directory, so the name appears only once the file has its size,
 * header and initial zeros durably. On failure the .tmp is unlinked (if the process dies
 * first, recovery rule 1 deletes it); a failure after the rename (the directory fsync)
 * leaves the segment in place and returns -errno. The size is normalized (at least two
 * headers, a multiple of 8); -EFBIG past what the header can say. */
int au_segment_create(const char *wal_dir, uint64_t first_lsn, uint64_t size,
                      uint32_t max_record)
{
    char tmp[4112], fin[4096];
    if ((size_t)snprintf(fin, sizeof fin, "%s/%020llu.seg", wal_dir,
                         (unsigned long long)first_lsn) >= sizeof fin)
        return -ENAMETOOLONG;
    snprintf(tmp, sizeof tmp, "%s.tmp", fin);
    if (size < 2 * AU_SEG_HDR)
        size = 2 * AU_SEG_HDR;
    size = (size + 7) & ~(uint64_t)7;
    if (size / 8 > UINT32_MAX)
        return -EFBIG;
    /* O_EXCL: open deletes every leftover .seg.tmp, so one that exists is not ours */
    int fd = au_open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return fd;
    uint8_t hdr[AU_SEG_HDR];
    au_segment_header_make(hdr, first_lsn, size, max_record);
    int64_t r = au_pwrite_full(fd, hdr, AU_SEG_HDR, 0);
    if (r >= 0)
        r = give_zeros(fd, AU_SEG_HDR, size, 0, NULL);
    if (r >= 0)
        r = au_fsync(fd);
    int c = au_close(fd);
    if (r >= 0 && c < 0)
        r = c;
    if (r >= 0)
        r = au_rename(tmp, fin);
    if (r >= 0)
        r = au_fsync_dir(wal_dir);
    if (r < 0) {
        au_unlink(tmp);
        return (int)r;
    }
    return 0;
}

#ifndef SPARE_SYNC_EVERY
#define SPARE_SYNC_EVERY (1u << 20)
#endif

/* The spare segment file (native/FORMAT.md, "Preallocation, rolling"): give `path`
 * (created 0600, truncated) its size and initial zeros (give_zeros) and fsync it, off the
 * commit path, so that a roll only writes the real header. The fd stays open in *out_fd.
 * `cancel` is read between chunks: non-zero stops early with -ECANCELED (close does not
 * wait for a fill). On any error the caller closes the fd (if >= 0) and unlinks the file. */
int au_spare_prepare(const char *path, uint64_t size, int *out_fd, const int *cancel)
{
    *out_fd = -1;
    int fd = au_open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return fd;
    *out_fd = fd;
    /* write back as we go: one fsync of many MiB of dirty pages at the end fills the
     * device queue, and every commit's fdatasync waits behind it (measured: 35-70 ms
     * commits while a whole 64 MiB spare was prepared, about what the inline roll cost) */
    int r = give_zeros(fd, 0, size, SPARE_SYNC_EVERY, cancel);
    return r < 0 ? r : au_fsync(fd);
}

/* Turn a prepared spare into <wal_dir>/<first_lsn>.seg: write the real header over its
 * zeros, fsync, rename, fsync the directory. Returns 0, or AU_SPARE_UNUSED (> 0) when a
 * step before the rename failed (nothing was renamed: the caller discards the spare and
 * creates the segment the usual way), or -errno when the rename was done but the
 * directory fsync failed (the writer fails, as with au_segment_create). */
int au_spare_install(int fd, const char *spare_path, const char *wal_dir, uint64_t first_lsn,
                     uint64_t size, uint32_t max_record)
{
    char fin[4096];
    if ((size_t)snprintf(fin, sizeof fin, "%s/%020llu.seg", wal_dir,
                         (unsigned long long)first_lsn) >= sizeof fin)
        return AU_SPARE_UNUSED;
    uint8_t hdr[AU_SEG_HDR];
    au_segment_header_make(hdr, first_lsn, size, max_record);
    if (au_pwrite_full(fd, hdr, AU_SEG_HDR, 0) < 0 || au_fsync(fd) < 0 ||
        au_rename(spare_path, fin) < 0)
        return AU_SPARE_UNUSED;
    return au_fsync_dir(wal_dir);
}
