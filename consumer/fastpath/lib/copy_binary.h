/* One row of sensores in PostgreSQL's COPY BINARY format, written from a reading the strict
   parser accepted: each field as the server stores it (uuid 16 bytes, timestamptz µs since
   2000-01-01, float8 IEEE bits, int4, int8), big-endian, so the server parses no text. The
   values are the ones the text row hands PostgreSQL to parse: strtod of the device's decimal
   (glibc rounds correctly, as float8in's strtod does), the instant in µs (3 or 6 fraction
   digits: exact). The stream's header and trailer are batch.py's. Column order: sink.COPY_SQL.
   Pure C, header only: it runs once per row. */
#ifndef IOT_FASTPATH_COPY_BINARY_H
#define IOT_FASTPATH_COPY_BINARY_H

#include <stdint.h>
#include <string.h>

#include "copy_text.h"
#include "reading.h"

/* µs between 1970-01-01 and PostgreSQL's epoch, 2000-01-01 (both UTC). */
#define PG_EPOCH_OFFSET_US 946684800000000LL
/* field count, 6 fields with their lengths, and the NULL extras */
#define BINARY_ROW_BYTES (2 + (4 + 16) + (4 + 8) * 3 + (4 + 4) + (4 + 8) + 4)

static inline char *put_be16(char *o, uint16_t v) {
    o[0] = (char)(v >> 8);
    o[1] = (char)v;
    return o + 2;
}

static inline char *put_be32(char *o, uint32_t v) {
    for (int i = 3; i >= 0; i--) {
        o[i] = (char)v;
        v >>= 8;
    }
    return o + 4;
}

static inline char *put_be64(char *o, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        o[i] = (char)v;
        v >>= 8;
    }
    return o + 8;
}

static inline char *put_float8_field(char *o, double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    return put_be64(put_be32(o, 8), bits);
}

/* 0 on memory error. */
static inline int put_reading_row_binary(Buffer *out, const Parsed *r, int64_t partition, int64_t offset) {
    if (!buffer_reserve(out, BINARY_ROW_BYTES)) return 0;
    char *o = out->data + out->len;
    o = put_be16(o, 7);
    o = put_be32(o, 16);
    memcpy(o, r->sensor, 16);
    o += 16;
    o = put_be64(put_be32(o, 8), (uint64_t)(r->stamp_us - PG_EPOCH_OFFSET_US));
    /* JSON "-0" is the integer 0 (the text row writes "0"); "-0.0" stays the float -0.0. */
    o = put_float8_field(o, r->t_negative_zero_int ? 0.0 : r->t);
    o = put_float8_field(o, r->h_negative_zero_int ? 0.0 : r->h);
    o = put_be32(put_be32(o, 4), (uint32_t)partition);
    o = put_be64(put_be32(o, 8), (uint64_t)offset);
    o = put_be32(o, UINT32_MAX); /* extras: NULL (length -1) */
    out->len = (size_t)(o - out->data);
    return 1;
}

#endif
