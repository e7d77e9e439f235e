/* CRC-32C (Castagnoli). Hardware instructions (SSE4.2 on x86-64, ARMv8 CRC on aarch64)
 * are chosen at run time; the accelerated functions carry target attributes so the file
 * itself is compiled for the baseline ISA (never -march=native). Table fallback:
 * slicing-by-8. Interface as the `crc32c` package: crc32c(data, value) continues `value`. */
#include "aurora.h"
#include "internal.h"

#include <pthread.h>
#include <string.h>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

#define POLY 0x82F63B78u /* reflected Castagnoli polynomial */

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static int hw_state = -1; /* -1 unknown, 0 no, 1 yes */

/* Fill the slicing-by-8 tables. Run once, under pthread_once, before any lookup: the
 * tables are read-only afterwards and every thread shares them without a lock. */
static void table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
}

/* CRC-32C by table, continuing `crc` (as the crc32c package). Any thread, any alignment,
 * any endianness: bytes one at a time up to 8-alignment, then 8 at a time. */
uint32_t au_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&table_once, table_init);
    const uint8_t *p = buf;
    uint32_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ table[0][(c ^ *p++) & 0xFF];
        len--;
    }
    while (len >= 8) {
        /* byte-wise loads: correct on any endianness */
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        c = table[7][lo & 0xFF] ^ table[6][(lo >> 8) & 0xFF] ^ table[5][(lo >> 16) & 0xFF] ^
            table[4][lo >> 24] ^ table[3][hi & 0xFF] ^ table[2][(hi >> 8) & 0xFF] ^
            table[1][(hi >> 16) & 0xFF] ^ table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = (c >> 8) ^ table[0][(c ^ *p++) & 0xFF];
    return ~c;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_HW 1
/* CRC-32C with the SSE4.2 crc32 instruction, same result as au_crc32c_sw. Called only
 * once au_crc32c_hw_available() said yes; the target attribute keeps the rest of the file
 * on the baseline ISA. */
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const void *buf,
                                                          size_t len)
{
    const uint8_t *p = buf;
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
/* A record's crc (type byte, lsn as 8 LE bytes, payload) while copying the payload into
 * its frame: one pass over the bytes, no dispatch per part (the writer frames 1,000-record
 * batches; the copy and the crc were two passes and three calls per record). */
__attribute__((target("sse4.2"))) static uint32_t frame_hw(uint8_t *dst, const uint8_t *src,
                                                           size_t len, uint8_t type,
                                                           const uint8_t *lsn8)
{
    uint64_t c = __builtin_ia32_crc32qi(0xFFFFFFFFu, type), v;
    memcpy(&v, lsn8, 8);
    c = __builtin_ia32_crc32di(c, v);
    while (len >= 8) {
        memcpy(&v, src, 8);
        memcpy(dst, &v, 8);
        c = __builtin_ia32_crc32di(c, v);
        src += 8;
        dst += 8;
        len -= 8;
    }
    while (len--) {
        uint8_t b = *src++;
        *dst++ = b;
        c = __builtin_ia32_crc32qi((uint32_t)c, b);
    }
    return ~(uint32_t)c;
}
/* Whether the CPU has SSE4.2 (and so crc32), by CPUID. */
static int detect_hw(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}
#elif defined(__aarch64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define HAVE_HW 1
/* CRC-32C with the ARMv8 CRC32C instructions, same result as au_crc32c_sw. Called only
 * once au_crc32c_hw_available() said yes. */
__attribute__((target("+crc"))) static uint32_t crc_hw(uint32_t crc, const void *buf,
                                                        size_t len)
{
    const uint8_t *p = buf;
    uint32_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = __builtin_aarch64_crc32cb(c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_aarch64_crc32cx(c, v);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = __builtin_aarch64_crc32cb(c, *p++);
    return ~c;
}
/* The x86 frame_hw above, with the ARMv8 CRC32C instructions. */
__attribute__((target("+crc"))) static uint32_t frame_hw(uint8_t *dst, const uint8_t *src,
                                                         size_t len, uint8_t type,
                                                         const uint8_t *lsn8)
{
    uint32_t c = __builtin_aarch64_crc32cb(0xFFFFFFFFu, type);
    uint64_t v;
    memcpy(&v, lsn8, 8);
    c = __builtin_aarch64_crc32cx(c, v);
    while (len >= 8) {
        memcpy(&v, src, 8);
        memcpy(dst, &v, 8);
        c = __builtin_aarch64_crc32cx(c, v);
        src += 8;
        dst += 8;
        len -= 8;
    }
    while (len--) {
        uint8_t b = *src++;
        *dst++ = b;
        c = __builtin_aarch64_crc32cb(c, b);
    }
    return ~c;
}
/* Whether the kernel reports the ARMv8 CRC32 instructions (HWCAP_CRC32). */
static int detect_hw(void)
{
    return (getauxval(AT_HWCAP) & HWCAP_CRC32) ? 1 : 0;
}
#else
#define HAVE_HW 0
#endif

/* Whether the CPU has crc32c instructions, detected on the first call and cached. Two
 * first callers may both detect (the same answer), hence relaxed atomics, no lock. */
int au_crc32c_hw_available(void)
{
#if HAVE_HW
    int s = __atomic_load_n(&hw_state, __ATOMIC_RELAXED);
    if (s < 0) {
        s = detect_hw();
        __atomic_store_n(&hw_state, s, __ATOMIC_RELAXED);
    }
    return s;
#else
    return 0;
#endif
}

/* The hardware CRC-32C, or the table when the CPU has none: the same value either way
 * (tests/test_crc32c.py compares them). */
uint32_t au_crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
#if HAVE_HW
    if (au_crc32c_hw_available())
        return crc_hw(crc, buf, len);
#endif
    return au_crc32c_sw(crc, buf, len);
}

/* The CRC-32C every checksum of the format uses: hardware when available. */
uint32_t au_crc32c(uint32_t crc, const void *buf, size_t len)
{
    return au_crc32c_hw(crc, buf, len);
}

/* Copy a payload into its frame and return its record crc (type byte, LSN as 8 LE bytes,
 * payload; unmasked): one pass with the hardware, a copy then the table without it. dst
 * and src must not overlap. The scanner recomputes crcs with au_record_crc, so a bug
 * here shows up as a crc mismatch, never as a silently wrong record. */
uint32_t au_crc32c_frame_copy(uint8_t *dst, const uint8_t *src, size_t len, uint8_t type,
                              uint64_t lsn)
{
    uint8_t pre[9];
    pre[0] = type;
    for (int i = 0; i < 8; i++)
        pre[1 + i] = (uint8_t)(lsn >> (8 * i));
#if HAVE_HW
    if (au_crc32c_hw_available())
        return frame_hw(dst, src, len, type, pre + 1);
#endif
    memcpy(dst, src, len);
    return au_crc32c_sw(au_crc32c_sw(0, pre, 9), src, len);
}

/* The masked crc stored on disk (FORMAT.md, LevelDB's mask: rotate right by 15, add
 * 0xA282EAD8), so a crc over bytes that embed crcs stays meaningful. The one definition:
 * Python calls it through cffi. */
uint32_t au_crc_mask(uint32_t crc)
{
    return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

/* The inverse of au_crc_mask. */
uint32_t au_crc_unmask(uint32_t masked)
{
    uint32_t r = masked - 0xA282EAD8u;
    return (r >> 17) | (r << 15);
}
