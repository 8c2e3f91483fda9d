/* Writing PostgreSQL COPY text: a growable buffer and the field writers (integers, UUIDs, doubles,
   UTC timestamps). Pure C, header only: these run once per row and must inline. */
#ifndef IOT_FASTPATH_COPY_TEXT_H
#define IOT_FASTPATH_COPY_TEXT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calendar.h"

typedef struct {
    char *data;
    size_t len, cap;
} Buffer;

static inline int buffer_reserve(Buffer *b, size_t extra) {
    if (b->len + extra <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + extra) cap *= 2;
    char *data = realloc(b->data, cap); /* plain C: called without the GIL */
    if (!data) return 0;
    b->data = data;
    b->cap = cap;
    return 1;
}

static inline void buffer_free(Buffer *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static inline char *put_int(char *o, int64_t v) {
    char tmp[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
    if (v < 0) *o++ = '-';
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n) *o++ = tmp[--n];
    return o;
}

static inline char *put_digits(char *o, int v, int width) {
    for (int i = width - 1; i >= 0; i--) {
        o[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return o + width;
}

static const char HEX[] = "0123456789abcdef";

static inline char *put_uuid(char *o, const uint8_t id[16]) {
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = HEX[id[i] >> 4];
        *o++ = HEX[id[i] & 15];
    }
    return o;
}

static inline char *put_double(char *o, double v) { return o + sprintf(o, "%.17g", v); }

static inline char *put_bucket_time(char *o, int64_t us) {
    int64_t day = floor_div(us, US_PER_DAY);
    int64_t sec = (us - day * US_PER_DAY) / 1000000;
    int y, m, d;
    civil_from_days(day, &y, &m, &d);
    o = put_digits(o, y, 4);
    *o++ = '-';
    o = put_digits(o, m, 2);
    *o++ = '-';
    o = put_digits(o, d, 2);
    *o++ = ' ';
    o = put_digits(o, (int)(sec / 3600), 2);
    *o++ = ':';
    o = put_digits(o, (int)(sec / 60 % 60), 2);
    memcpy(o, ":00+00", 6);
    return o + 6;
}

#endif
