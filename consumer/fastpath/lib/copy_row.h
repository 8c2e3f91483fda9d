/* One row of sensores in COPY text, written from a reading the strict parser accepted: its
   texts are copied as the device sent them (the exact decimal PostgreSQL parses), the UUID
   canonical. Column order: sink.COPY_SQL. Pure C, header only: it runs once per row. */
#ifndef IOT_FASTPATH_COPY_ROW_H
#define IOT_FASTPATH_COPY_ROW_H

#include <string.h>

#include "copy_text.h"
#include "reading.h"

/* 0 on memory error. */
static inline int put_reading_row(Buffer *out, const Parsed *r, int64_t partition, int64_t offset) {
    if (!buffer_reserve(out, 36 + r->stamp_len + r->t_len + r->h_len + 64)) return 0;
    char *o = out->data + out->len;
    o = put_uuid(o, r->sensor);
    *o++ = '\t';
    memcpy(o, r->stamp_text, r->stamp_len);
    o += r->stamp_len;
    *o++ = '\t';
    if (r->t_negative_zero_int) *o++ = '0';
    else {
        memcpy(o, r->t_text, r->t_len);
        o += r->t_len;
    }
    *o++ = '\t';
    if (r->h_negative_zero_int) *o++ = '0';
    else {
        memcpy(o, r->h_text, r->h_len);
        o += r->h_len;
    }
    *o++ = '\t';
    o = put_int(o, partition);
    *o++ = '\t';
    o = put_int(o, offset);
    memcpy(o, "\t\\N\n", 4);
    o += 4;
    out->len = (size_t)(o - out->data);
    return 1;
}

#endif
