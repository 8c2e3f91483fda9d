/*
 * The C test driver of the native decoder's pure-C units (lib/), built and run under
 * AddressSanitizer and UndefinedBehaviorSanitizer by tests/sanitize.sh (make test-native).
 *
 * Known answers first (CRC-32C check value, varints at the edges of 64 bits, the COPY writers
 * against printf), then the reading parser over seed readings and every single-byte change,
 * truncation and insertion of them (what a corrupted or crafted record can hold): the parser
 * must never read out of bounds or overflow, and whatever it accepts must lie inside the
 * limits it was given. Then the record-batch framing over a batch built here and every
 * single-byte change and truncation of it (never a read past the batch; a changed byte the CRC
 * covers is refused), the COPY row of a parsed reading, and the batch summary against sums
 * and orders computed here. Exit 0 when every check holds; any sanitizer finding aborts the run.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calendar.h"
#include "copy_binary.h"
#include "copy_row.h"
#include "copy_text.h"
#include "crc32c.h"
#include "reading.h"
#include "record_batch.h"
#include "summary.h"
#include "wire.h"

static int failures = 0;
static long checks = 0;

#define CHECK(cond, ...)                              \
    do {                                              \
        checks++;                                     \
        if (!(cond)) {                                \
            failures++;                               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);             \
            fputc('\n', stderr);                      \
        }                                             \
    } while (0)

static void test_crc32c(void) {
    const uint8_t check[] = "123456789";
    CHECK(crc32c_software(check, 9) == 0xE3069283u, "software CRC-32C check value");
    CHECK(crc32c(check, 9) == 0xE3069283u, "CRC-32C check value (%s)", crc32c_hardware_enabled() ? "sse4.2" : "table");
    uint8_t data[1031];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 131 + 7);
    for (size_t n = 0; n <= sizeof data; n += 13) /* every alignment and tail length */
        CHECK(crc32c(data, n) == crc32c_software(data, n), "hardware and table agree on %zu bytes", n);
}

static size_t put_varint(uint8_t *o, int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 0;
    while (z >= 0x80) {
        o[n++] = (uint8_t)(z | 0x80);
        z >>= 7;
    }
    o[n++] = (uint8_t)z;
    return n;
}

static void test_varints(void) {
    const int64_t values[] = {0, 1, -1, 63, -64, 64, 300, -300, INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        uint8_t buf[16];
        size_t n = put_varint(buf, values[i]);
        const uint8_t *p = buf;
        int64_t out = 0;
        CHECK(read_varint(&p, buf + n, &out) && out == values[i] && p == buf + n, "varint %" PRId64, values[i]);
        for (size_t cut = 0; cut < n; cut++) { /* truncated: refused, never read past the end */
            const uint8_t *q = buf;
            uint8_t *exact = malloc(cut ? cut : 1);
            memcpy(exact, buf, cut);
            q = exact;
            CHECK(!read_varint(&q, exact + cut, &out), "truncated varint %" PRId64 " at %zu", values[i], cut);
            free(exact);
        }
    }
    uint8_t too_long[11];
    memset(too_long, 0xff, sizeof too_long);
    const uint8_t *p = too_long;
    int64_t out;
    CHECK(!read_varint(&p, too_long + sizeof too_long, &out), "a varint longer than 64 bits is refused");
    const uint8_t be[8] = {0x80, 0, 0, 0, 0, 0, 0, 1};
    CHECK(be64(be) == INT64_MIN + 1, "be64");
    CHECK(be32(be + 4) == 1 && be16(be) == INT16_MIN, "be32 / be16");
}

static void test_copy_writers(void) {
    const int64_t ints[] = {0, 7, -7, 1234567890123, INT64_MAX, INT64_MIN + 1, INT64_MIN};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        char got[32], want[32];
        *put_int(got, ints[i]) = '\0';
        snprintf(want, sizeof want, "%" PRId64, ints[i]);
        CHECK(strcmp(got, want) == 0, "put_int %s != %s", got, want);
    }
    const uint8_t id[16] = {0x6f, 0x1c, 0x2d, 0x3e, 0x4a, 0x5b, 0x4c, 0x6d, 0x8e, 0x7f, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab};
    char text[40];
    *put_uuid(text, id) = '\0';
    CHECK(strcmp(text, "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab") == 0, "put_uuid %s", text);
    uint8_t back[16];
    CHECK(parse_uuid((const uint8_t *)text, 36, back) && memcmp(back, id, 16) == 0, "parse_uuid(put_uuid(x)) == x");
    char when[64];
    *put_bucket_time(when, days_from_civil(2026, 11, 28) * US_PER_DAY + 3600LL * 1000000 * 13) = '\0';
    CHECK(strncmp(when, "2026-11-28", 10) == 0, "put_bucket_time %s", when);
    CHECK(floor_div(-1, US_PER_DAY) == -1 && floor_div(US_PER_DAY, US_PER_DAY) == 1, "floor_div");
    Buffer b = {0};
    for (int i = 0; i < 100000; i++) {
        if (!buffer_reserve(&b, 64)) break;
        b.data[b.len++] = 'x';
    }
    CHECK(b.len == 100000, "buffer grows");
    buffer_free(&b);
}

static const char *SEEDS[] = {
    "{\"sensor_id\": \"6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab\", \"timestamp\": \"2026-11-28T10:00:00.123456+00:00\", "
    "\"temperatura\": 24.17, \"umidade\": 55.02}",
    "{\"umidade\":0,\"temperatura\":-0,\"timestamp\":\"2026-11-28T10:00:00Z\",\"sensor_id\":\"6F1C2D3E-4A5B-4C6D-8E7F-0123456789AB\"}",
    "{\"sensor_id\":\"6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab\",\"timestamp\":\"2026-02-28T23:59:59.999Z\",\"temperatura\":2.417e1,\"umidade\":1e2}",
    " {\n \"temperatura\" : 85 , \"umidade\" : 100.0 , \"sensor_id\" : \"00000000-0000-0000-0000-000000000000\" , \"timestamp\" : \"2000-01-01T00:00:00+00:00\" } ",
    "{\"sensor_id\": \"6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab\", \"timestamp\": \"2026-11-28T10:00:00+00:00\", \"temperatura\": 24, \"umidade\": 55, \"x\": 1}",
    "{\"sensor_id\": \"6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab\", \"timestamp\": \"2026-11-28T10:00:00+02:00\", \"temperatura\": 24, \"umidade\": 55}",
    "{}",
    "",
};

static const uint8_t REPLACEMENTS[] = {0, '"', '\\', '{', '}', ',', ':', '-', '+', '.', 'e', 'E', '0', '9', 'Z', 'T', ' ', 0x7f, 0x80, 0xff};

static Limits LIMITS = {-40.0, 85.0, 0.0, 100.0, 4096, 946684800000000LL, 1796083200000000LL};

/* Parse a copy of exactly ``n`` bytes (a heap block of that size: ASan sees any read past it). */
static void parse_exact(const uint8_t *bytes, size_t n) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, bytes, n);
    Parsed r;
    if (parse_reading(copy, (int64_t)n, &LIMITS, &r)) {
        CHECK(r.t >= LIMITS.t_min && r.t <= LIMITS.t_max && r.h >= LIMITS.h_min && r.h <= LIMITS.h_max,
              "accepted values inside the limits");
        CHECK(r.stamp_us >= LIMITS.earliest_us && r.stamp_us <= LIMITS.latest_us, "accepted time inside the window");
        CHECK(r.stamp_text >= copy && r.stamp_text + r.stamp_len <= copy + n, "timestamp text inside the value");
        CHECK(r.t_text >= copy && r.t_text + r.t_len <= copy + n && r.h_text >= copy && r.h_text + r.h_len <= copy + n,
              "number texts inside the value");
        CHECK(isfinite(r.t) && isfinite(r.h), "finite numbers");
    }
    free(copy);
}

static void test_reading_parser(void) {
    Parsed r;
    const char *first = SEEDS[0];
    CHECK(parse_reading((const uint8_t *)first, (int64_t)strlen(first), &LIMITS, &r) && r.t == 24.17 && r.h == 55.02,
          "the common form is accepted with its values");
    CHECK(!parse_reading((const uint8_t *)SEEDS[4], (int64_t)strlen(SEEDS[4]), &LIMITS, &r), "extras: Python decides");
    CHECK(!parse_reading((const uint8_t *)SEEDS[5], (int64_t)strlen(SEEDS[5]), &LIMITS, &r), "offset: Python decides");
    Limits small = LIMITS;
    small.max_payload = 10;
    CHECK(!parse_reading((const uint8_t *)first, (int64_t)strlen(first), &small, &r), "over max_payload: refused");
    for (size_t s = 0; s < sizeof SEEDS / sizeof *SEEDS; s++) {
        const uint8_t *seed = (const uint8_t *)SEEDS[s];
        size_t n = strlen(SEEDS[s]);
        uint8_t *work = malloc(n + 2);
        for (size_t cut = 0; cut <= n; cut++) parse_exact(seed, cut);
        for (size_t i = 0; i < n; i++) {
            for (size_t k = 0; k < sizeof REPLACEMENTS; k++) {
                memcpy(work, seed, n);
                work[i] = REPLACEMENTS[k];
                parse_exact(work, n);
            }
            for (int bit = 0; bit < 8; bit++) {
                memcpy(work, seed, n);
                work[i] ^= (uint8_t)(1u << bit);
                parse_exact(work, n);
            }
            for (size_t k = 0; k < sizeof REPLACEMENTS; k++) { /* insertion */
                memcpy(work, seed, i);
                work[i] = REPLACEMENTS[k];
                memcpy(work + i + 1, seed + i, n - i);
                parse_exact(work, n + 1);
            }
        }
        free(work);
    }
    /* pseudo-random bytes (a fixed LCG: the run is deterministic) */
    uint64_t state = 20261201;
    uint8_t noise[160];
    for (int round = 0; round < 200000; round++) {
        size_t n = (size_t)(state >> 33) % sizeof noise;
        for (size_t i = 0; i < n; i++) {
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            noise[i] = (uint8_t)(state >> 56);
        }
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        parse_exact(noise, n);
    }
}


static void put_be(uint8_t *o, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) {
        o[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* A v2 record batch of ``n`` records with values ``values[i]``, base offset ``base``; its size. */
static size_t build_batch(uint8_t *out, int64_t base, const char **values, int n, int16_t attributes) {
    uint8_t *p = out + BATCH_HEADER;
    for (int i = 0; i < n; i++) {
        uint8_t body[512];
        size_t len = 0, vlen = strlen(values[i]);
        body[len++] = 0;                         /* attributes */
        len += put_varint(body + len, i * 10);  /* timestamp delta */
        len += put_varint(body + len, i);       /* offset delta */
        len += put_varint(body + len, -1);      /* null key */
        len += put_varint(body + len, (int64_t)vlen);
        memcpy(body + len, values[i], vlen);
        len += vlen;
        len += put_varint(body + len, 1); /* one header: "k" = "v" */
        len += put_varint(body + len, 1);
        body[len++] = 'k';
        len += put_varint(body + len, 1);
        body[len++] = 'v';
        p += put_varint(p, (int64_t)len);
        memcpy(p, body, len);
        p += len;
    }
    size_t size = (size_t)(p - out);
    put_be(out, (uint64_t)base, 8);
    put_be(out + 8, size - 12, 4);
    put_be(out + 12, 5, 4); /* leader epoch */
    out[16] = 2;            /* magic */
    put_be(out + 21, (uint16_t)attributes, 2);
    put_be(out + 23, (uint64_t)(n - 1), 4);
    put_be(out + 27, 1764324000000ULL, 8);
    put_be(out + 35, 1764324000000ULL + 10 * (n - 1), 8);
    put_be(out + 43, (uint64_t)-1, 8); /* producer id */
    put_be(out + 51, (uint64_t)-1, 2);
    put_be(out + 53, (uint64_t)-1, 4);
    put_be(out + 57, (uint64_t)n, 4);
    put_be(out + 17, crc32c(out + 21, size - 21), 4);
    return size;
}

/* Frame a copy of exactly ``n`` bytes and walk its records (ASan sees any read past them). */
static BatchStatus frame_exact(const uint8_t *bytes, size_t n, int *records) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, bytes, n);
    BatchFrame f;
    BatchStatus status = batch_frame(copy, n, &f);
    *records = 0;
    if (status == BATCH_READY) {
        CHECK(f.records == copy + BATCH_HEADER && f.end <= copy + n && f.size <= n, "frame inside the bytes");
        const uint8_t *p = f.records;
        RecordFrame r;
        while (p < f.end && record_frame(&p, f.end, &r)) {
            CHECK(r.begin >= copy && r.end <= f.end && p == r.end, "record inside its batch");
            CHECK(r.value_len < 0 || (r.value >= r.begin && r.value + r.value_len <= r.end), "value inside its record");
            (*records)++;
        }
    }
    free(copy);
    return status;
}

static void test_record_batch_framing(void) {
    const char *values[] = {SEEDS[0], SEEDS[4], "", "{\"not\": \"a reading\"}"};
    uint8_t batch[4096];
    size_t size = build_batch(batch, 1000, values, 4, 0);
    BatchFrame f;
    CHECK(batch_frame(batch, size, &f) == BATCH_READY, "a built batch frames");
    CHECK(f.base_offset == 1000 && f.next_offset == 1004 && f.leader_epoch == 5 && f.record_count == 4,
          "its offsets, epoch and count");
    CHECK(!f.control && !f.log_append_time && f.base_ts == 1764324000000LL, "its flags and timestamps");
    const uint8_t *p = f.records;
    RecordFrame r;
    for (int i = 0; i < 4; i++) {
        CHECK(record_frame(&p, f.end, &r), "record %d reads", i);
        CHECK(r.offset_delta == i && r.ts_delta == i * 10 && r.key_len == -1 && r.header_count == 1, "record %d fields", i);
        CHECK(r.value_len == (int64_t)strlen(values[i]) && memcmp(r.value, values[i], (size_t)r.value_len) == 0,
              "record %d value", i);
    }
    CHECK(p == f.end, "the records fill the batch");
    CHECK(batch_frame(batch, size - 1, &f) == BATCH_INCOMPLETE, "one byte short: the end of a fetch");
    CHECK(batch_frame(batch, 11, &f) == BATCH_INCOMPLETE, "no length yet");
    uint8_t other[4096];
    memcpy(other, batch, size);
    other[16] = 1;
    CHECK(batch_frame(other, size, &f) == BATCH_OTHER_FORMAT, "magic 1: left to kafka-python");
    size_t zsize = build_batch(other, 7, values, 2, 4 /* zstd */);
    CHECK(batch_frame(other, zsize, &f) == BATCH_COMPRESSED && f.codec == 4 && f.records == other + BATCH_HEADER,
          "compressed: framed and CRC-checked, the codec named, its records to decompress");
    size_t csize = build_batch(other, 7, values, 1, 0x20 | 0x10);
    CHECK(batch_frame(other, csize, &f) == BATCH_READY && f.control, "a control batch is flagged");
    memcpy(other, batch, size);
    put_be(other + 8, 0xFFFFFFF0u, 4);
    CHECK(batch_frame(other, size, &f) == BATCH_CORRUPT && strstr(f.error, "negative"), "negative length");
    memcpy(other, batch, size);
    put_be(other, (uint64_t)INT64_MAX - 1, 8);
    put_be(other + 17, crc32c(other + 21, size - 21), 4);
    CHECK(batch_frame(other, size, &f) == BATCH_CORRUPT && strstr(f.error, "overflows"), "last offset overflows");
    /* every single-byte change and every truncation: never out of bounds; a change the CRC
       covers (bytes 21..) never frames as READY */
    int records;
    for (size_t cut = 0; cut <= size; cut++) frame_exact(batch, cut, &records);
    for (size_t i = 0; i < size; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(other, batch, size);
            other[i] ^= (uint8_t)(1u << bit);
            BatchStatus status = frame_exact(other, size, &records);
            if (i >= 21) CHECK(status != BATCH_READY, "a flipped bit at %zu fails the CRC", i);
        }
        for (size_t k = 0; k < sizeof REPLACEMENTS; k++) {
            memcpy(other, batch, size);
            other[i] = REPLACEMENTS[k];
            frame_exact(other, size, &records);
        }
    }
    /* records whose lengths lie (the CRC recomputed, as a crafting producer would) */
    for (size_t i = BATCH_HEADER; i < size; i++) {
        for (size_t k = 0; k < sizeof REPLACEMENTS; k++) {
            memcpy(other, batch, size);
            other[i] = REPLACEMENTS[k];
            put_be(other + 17, crc32c(other + 21, size - 21), 4);
            frame_exact(other, size, &records);
        }
    }
}

static void test_copy_row(void) {
    Parsed r;
    CHECK(parse_reading((const uint8_t *)SEEDS[0], (int64_t)strlen(SEEDS[0]), &LIMITS, &r), "seed 0 parses");
    Buffer out = {0};
    CHECK(put_reading_row(&out, &r, 3, 1234567), "the row is written");
    const char want[] = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab\t2026-11-28T10:00:00.123456+00:00\t24.17\t55.02\t3\t1234567\t\\N\n";
    CHECK(out.len == strlen(want) && memcmp(out.data, want, out.len) == 0, "the row: %.*s", (int)out.len, out.data);
    CHECK(parse_reading((const uint8_t *)SEEDS[1], (int64_t)strlen(SEEDS[1]), &LIMITS, &r), "seed 1 parses");
    out.len = 0;
    CHECK(put_reading_row(&out, &r, 0, 0), "the row is written");
    CHECK(strstr(out.data, "\t0\t0\t0\t0\t\\N\n") != NULL && strncmp(out.data, "6f1c2d3e", 8) == 0,
          "-0 as 0, the id lower case: %.*s", (int)out.len, out.data);
    buffer_free(&out);
}

/* The same seed as one COPY BINARY row: every field's length and big-endian bytes, by hand. */
static void test_copy_binary_row(void) {
    Parsed r;
    CHECK(parse_reading((const uint8_t *)SEEDS[0], (int64_t)strlen(SEEDS[0]), &LIMITS, &r), "seed 0 parses");
    Buffer out = {0};
    CHECK(put_reading_row_binary(&out, &r, 3, 1234567), "the binary row is written");
    CHECK(out.len == BINARY_ROW_BYTES, "%zu bytes, not %d", out.len, BINARY_ROW_BYTES);
    const uint8_t *b = (const uint8_t *)out.data;
    const uint8_t head[] = {0, 7, 0, 0, 0, 16, 0x6f, 0x1c, 0x2d, 0x3e, 0x4a, 0x5b, 0x4c, 0x6d,
                            0x8e, 0x7f, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0, 0, 0, 8};
    CHECK(memcmp(b, head, sizeof head) == 0, "field count, then the uuid's 16 bytes");
    int64_t pg_us = 0;
    for (int i = 0; i < 8; i++) pg_us = pg_us << 8 | b[26 + i];
    /* 2026-11-28T10:00:00.123456Z in µs since 2000-01-01 */
    CHECK(pg_us == (days_from_civil(2026, 11, 28) - days_from_civil(2000, 1, 1)) * US_PER_DAY + 36000123456LL,
          "timestamptz %lld", (long long)pg_us);
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++) bits = bits << 8 | b[38 + i];
    double t;
    memcpy(&t, &bits, sizeof t);
    CHECK(t == 24.17 && b[37] == 8, "temperatura %.17g", t);
    const uint8_t tail[] = {0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0x12, 0xd6, 0x87, 0xff, 0xff, 0xff, 0xff};
    CHECK(memcmp(b + out.len - sizeof tail, tail, sizeof tail) == 0, "partition 3, offset 1234567, extras NULL");
    CHECK(parse_reading((const uint8_t *)SEEDS[1], (int64_t)strlen(SEEDS[1]), &LIMITS, &r), "seed 1 parses");
    out.len = 0;
    CHECK(put_reading_row_binary(&out, &r, 0, 0), "the binary row is written");
    bits = 0;
    for (int i = 0; i < 8; i++) bits = bits << 8 | (uint8_t)out.data[38 + i];
    CHECK(bits == 0, "-0 is the integer 0: +0.0, bits %llx", (unsigned long long)bits);
    buffer_free(&out);
}

static void test_summary(void) {
    summary_seed(0x0123456789abcdefULL, 0xfedcba9876543210ULL);
    Summary s = {0};
    const int64_t minute = 60000000LL, day0 = days_from_civil(2026, 11, 28) * US_PER_DAY;
    uint8_t ids[3000][16];
    double t_sum[3000] = {0};
    for (int i = 0; i < 3000; i++) {
        memset(ids[i], 0, 16);
        put_be(ids[i] + 8, (uint64_t)i * 0x9E3779B97F4A7C15ULL, 8);
    }
    /* 3,000 sensors, 4 readings each in one minute of today, two partitions; partition 9's
       readings are added first, then partition 2's, then one late row of partition 9 */
    long rows = 0;
    for (int round = 0; round < 4; round++)
        for (int i = 0; i < 3000; i++) {
            int32_t partition = i % 2 ? 2 : 9;
            double t = 20.0 + (double)((i + round) % 10), h = 50.0 + round;
            CHECK(summary_add(&s, ids[i], partition, (int64_t)round * 3000 + i, day0 + (i % 600) * minute + round, t, h),
                  "added");
            t_sum[i] += t;
            rows++;
        }
    CHECK(summary_add(&s, ids[0], 9, 5, day0 - 1, 21.0, 40.0), "a late reading, yesterday");
    CHECK(s.n_rows == (size_t)rows + 1 && s.n_sensors == 3000, "every row, every sensor");
    CHECK(s.n_days == 2 && s.days[0] == day0 / US_PER_DAY && s.days[1] == day0 / US_PER_DAY - 1, "two days in order");
    CHECK(s.n_partitions == 2 && s.partitions[0] == 9 && s.partitions[1] == 2, "partitions in first-seen order");
    CHECK(s.out_of_order, "the late row of partition 9 came after partition 2's");
    CHECK(s.n_buckets == 3001, "one bucket per sensor-minute, the late one its own");
    for (int i = 0; i < 3000; i++) {
        long k = summary_find(&s, ids[i]);
        CHECK(k >= 0 && memcmp(s.sensors[k].id, ids[i], 16) == 0, "sensor %d found", i);
    }
    for (size_t b = 0; b < s.n_buckets; b++) { /* sensors are numbered in first-seen order: as ids[] */
        const SummaryBucket *bucket = &s.buckets[b];
        if (bucket->count == 4) CHECK(bucket->t_sum == t_sum[bucket->sensor], "bucket %zu's sum", b);
        else CHECK(bucket->sensor == 0 && bucket->count == 1 && bucket->t_sum == 21.0, "the late bucket");
    }
    uint8_t absent[16] = {1};
    CHECK(summary_find(&s, absent) == -1, "an absent sensor is not found");
    Buffer out = {0};
    CHECK(summary_rollup_copy(&s, 60, &out) == 1, "minute rows");
    size_t lines = 0;
    for (size_t i = 0; i < out.len; i++) lines += out.data[i] == '\n';
    CHECK(lines == 3001, "a row per minute bucket (%zu)", lines);
    char first[64];
    *put_uuid(first, ids[0]) = '\0';
    CHECK(strncmp(out.data, first, 36) == 0 && strncmp(out.data + 37, "2026-11-28 00:00:00+00\t4\t", 25) == 0,
          "first row: %.60s", out.data);
    out.len = 0;
    CHECK(summary_rollup_copy(&s, 3600, &out) == 1, "hour rows");
    lines = 0;
    for (size_t i = 0; i < out.len; i++) lines += out.data[i] == '\n';
    CHECK(lines == 3001, "3,000 sensors in their hours plus the late one (%zu)", lines);
    CHECK(summary_rollup_copy(&s, 61, &out) == -1, "other widths refused");
    buffer_free(&out);
    s.sensors[summary_find(&s, ids[0])].selected = 1;
    s.sensors[summary_find(&s, ids[1])].selected = 1;
    const SummaryRow **picked = malloc(s.n_rows * sizeof *picked);
    size_t n = summary_selected_rows(&s, picked);
    CHECK(n == 9, "4 + 4 rows and the late one (%zu)", n);
    for (size_t i = 1; i < n; i++)
        CHECK(picked[i - 1]->partition_seq < picked[i]->partition_seq ||
                  (picked[i - 1]->partition_seq == picked[i]->partition_seq && picked[i - 1]->offset < picked[i]->offset),
              "partition then offset order at %zu", i);
    CHECK(picked[0]->partition == 9 && picked[0]->offset == 0 && picked[1]->offset == 5, "the late row in its place");
    free(picked);
    const SummarySensor *zero = &s.sensors[summary_find(&s, ids[0])];
    CHECK(zero->t_min == 20.0 && zero->t_max == 23.0 && zero->h_min == 40.0 && zero->h_max == 53.0, "sensor 0's ranges");
    CHECK(zero->newest_us == day0 + 3 && zero->newest_partition == 9, "sensor 0's newest reading");
    summary_free(&s);
    CHECK(s.n_rows == 0 && s.rows == NULL, "freed and empty again");
}

int main(void) {
    crc32c_init();
    test_crc32c();
    test_varints();
    test_copy_writers();
    test_reading_parser();
    test_record_batch_framing();
    test_copy_row();
    test_copy_binary_row();
    test_summary();
    printf("%ld checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
