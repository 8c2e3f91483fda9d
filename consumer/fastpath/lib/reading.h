/* The strict common form of a reading, recognised in one pass over the JSON bytes. Pure C: the C
   test driver fuzzes it under AddressSanitizer and UBSan. Anything outside the strict form is
   left to the Python validator (the reference), which names the defect. */
#ifndef IOT_FASTPATH_READING_H
#define IOT_FASTPATH_READING_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    double t_min, t_max, h_min, h_max;
    int64_t max_payload;
    int64_t earliest_us, latest_us;
} Limits;

typedef struct {
    uint8_t sensor[16];
    int64_t stamp_us;
    double t, h;
    const uint8_t *stamp_text, *t_text, *h_text;
    size_t stamp_len, t_len, h_len;
    int t_negative_zero_int, h_negative_zero_int;
} Parsed;

/* 1: ``s`` (``n`` bytes) is a UUID in 8-4-4-4-12 hex form, any case, written to ``id``. */
int parse_uuid(const uint8_t *s, size_t n, uint8_t id[16]);
/* 1: the value is a reading in the strict form (``r`` filled, its texts pointing into ``p``);
   0: the Python validator decides. */
int parse_reading(const uint8_t *p, int64_t size, const Limits *lim, Parsed *r);

#endif
