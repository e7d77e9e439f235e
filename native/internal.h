/* Internal helpers shared by the C files (not part of the cffi API). */
#ifndef AURORA_INTERNAL_H
#define AURORA_INTERNAL_H

#include <stdint.h>

#define AU_FORMAT_VERSION 2u      /* written; version 1 segments are still read */

enum {
    AU_R_OK = 0,
    AU_R_SEG_SHORT, AU_R_SEG_MAGIC, AU_R_SEG_CRC, AU_R_SEG_VERSION, AU_R_SEG_SIZE,
    AU_R_SHORT_HEADER, AU_R_HDR_CRC, AU_R_BATCH_LEN, AU_R_BATCH_PAST_EOF, AU_R_FLAGS,
    AU_R_LSN_GAP, AU_R_LSN_BACK, AU_R_REC_TOO_BIG, AU_R_REC_PAST_BATCH, AU_R_REC_TYPE,
    AU_R_REC_CRC, AU_R_REC_LSN, AU_R_PADDING, AU_R_SEAL_RECORDS, AU_R_TRAILING, AU_R_SEG_LIMIT,
};

static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

uint32_t au_batch_hdr_crc(const uint8_t *h);
void au_batch_header(uint8_t *h, uint32_t len, uint64_t first_lsn, uint32_t count,
                     uint32_t flags, uint64_t durable_end);
uint32_t au_record_crc(uint8_t type, uint64_t lsn, const uint8_t *payload, uint32_t len);
/* copy a payload into its frame and return its record crc (unmasked) in one pass; the
 * scanner keeps au_record_crc, so every scan cross-checks the writer's crcs */
uint32_t au_crc32c_frame_copy(uint8_t *dst, const uint8_t *src, size_t len, uint8_t type,
                              uint64_t lsn);

/* the spare segment file: prepared off the commit path, installed by a roll */
#define AU_SPARE_NAME   "00000000000000000000.seg.tmp"  /* LSN 0: never a segment */
#define AU_SPARE_UNUSED 1
int au_spare_prepare(const char *path, uint64_t size, int *out_fd, const int *cancel);
int au_spare_install(int fd, const char *spare_path, const char *wal_dir, uint64_t first_lsn,
                     uint64_t size, uint32_t max_record);

#endif
