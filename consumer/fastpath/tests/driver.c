/*
 * The C test driver of the native decoder's pure-C units (lib/), built and run under
 * AddressSanitizer and UndefinedBehaviorSanitizer by tests/sanitize.sh (make test-native).
 *
 * Known answers first (CRC-32C check value, varints at the edges of 64 bits, the COPY writers
 * against printf), then the reading parser over seed readings and every single-byte change,
 * truncation and insertion of them (what a corrupted or crafted record can hold): the parser
 * must never read out of bounds or overflow, and whatever it accepts must lie inside the
 * limits it was given. Exit 0 when every check holds; any sanitizer finding aborts the run.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calendar.h"
#include "copy_text.h"
#include "crc32c.h"
#include "reading.h"
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

int main(void) {
    crc32c_init();
    test_crc32c();
    test_varints();
    test_copy_writers();
    test_reading_parser();
    printf("%ld checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
