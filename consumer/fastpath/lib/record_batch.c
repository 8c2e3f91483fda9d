/* Record-batch framing (record_batch.h). Field positions: Kafka's DefaultRecordBatch. */
#include "record_batch.h"

#include "crc32c.h"
#include "wire.h"

BatchStatus batch_frame(const uint8_t *b, size_t remaining, BatchFrame *f) {
    f->error = NULL;
    if (remaining < 12) return BATCH_INCOMPLETE;
    int32_t length = be32(b + 8);
    f->base_offset = be64(b);
    if (length < 0) { /* kafka-python fails on such a batch too (a slice that ends before it starts) */
        f->error = " has a negative length";
        return BATCH_CORRUPT;
    }
    f->size = (size_t)length + 12;
    if (f->size > remaining) return BATCH_INCOMPLETE;
    if (remaining < 17 || b[16] != 2) return BATCH_OTHER_FORMAT;
    if (f->size < BATCH_HEADER) {
        f->error = " is too short";
        return BATCH_CORRUPT;
    }
    int16_t attributes = be16(b + 21);
    f->codec = attributes & 0x07;
    if (crc32c(b + 21, f->size - 21) != (uint32_t)be32(b + 17)) {
        f->error = " failed crc check";
        return BATCH_CORRUPT;
    }
    f->leader_epoch = be32(b + 12);
    if (__builtin_add_overflow(f->base_offset, (int64_t)be32(b + 23) + 1, &f->next_offset)) {
        f->error = ": its last offset overflows";
        return BATCH_CORRUPT;
    }
    f->control = (attributes & 0x20) != 0;
    f->log_append_time = (attributes & 0x08) != 0;
    f->base_ts = be64(b + 27);
    f->max_ts = be64(b + 35);
    f->record_count = be32(b + 57);
    f->records = b + BATCH_HEADER;
    f->end = b + f->size;
    return f->codec ? BATCH_COMPRESSED : BATCH_READY;
}

int record_frame(const uint8_t **pp, const uint8_t *end, RecordFrame *r) {
    const uint8_t *p = *pp;
    int64_t length;
    r->begin = p;
    if (!read_varint(&p, end, &length) || length < 0 || length > end - p) return 0;
    const uint8_t *rec_end = p + length;
    p++; /* attributes */
    if (p > rec_end || !read_varint(&p, rec_end, &r->ts_delta) || !read_varint(&p, rec_end, &r->offset_delta) ||
        !read_varint(&p, rec_end, &r->key_len) || r->key_len < -1 || r->key_len > rec_end - p)
        return 0;
    r->key = p;
    if (r->key_len > 0) p += r->key_len;
    if (!read_varint(&p, rec_end, &r->value_len) || r->value_len < -1 || r->value_len > rec_end - p) return 0;
    r->value = p;
    if (r->value_len > 0) p += r->value_len;
    if (!read_varint(&p, rec_end, &r->header_count) || r->header_count < 0) return 0;
    r->headers = p;
    for (int64_t i = 0; i < r->header_count; i++) {
        int64_t key_len, value_len;
        if (!read_varint(&p, rec_end, &key_len) || key_len < 0 || key_len > rec_end - p) return 0;
        p += key_len;
        if (!read_varint(&p, rec_end, &value_len) || value_len < -1 || value_len > rec_end - p) return 0;
        if (value_len > 0) p += value_len;
    }
    if (p != rec_end) return 0;
    r->end = rec_end;
    *pp = rec_end;
    return 1;
}
