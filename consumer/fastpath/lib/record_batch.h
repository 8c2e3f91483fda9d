/* Kafka's record-batch framing (message format v2): one batch header checked (length, magic,
   CRC-32C, offsets), then its records one by one. Pure C: the C test driver runs it under the
   sanitizers over crafted and mutated batches. What a record's value means is reading.h's. */
#ifndef IOT_FASTPATH_RECORD_BATCH_H
#define IOT_FASTPATH_RECORD_BATCH_H

#include <stddef.h>
#include <stdint.h>

#define BATCH_HEADER 61

typedef enum {
    BATCH_INCOMPLETE,   /* fewer bytes than the batch: the end of a fetch (kafka-python ignores it too) */
    BATCH_OTHER_FORMAT, /* not message format v2 */
    BATCH_COMPRESSED,   /* gzip, snappy, lz4 or zstd: header checked, ``records`` the compressed bytes */
    BATCH_READY,        /* header checked: records (or, for a control batch, nothing) to read */
    BATCH_CORRUPT,      /* ``error`` says what: kafka-python refuses such a batch too */
} BatchStatus;

typedef struct {
    size_t size;                      /* bytes of the whole batch */
    int64_t base_offset, next_offset; /* next_offset: the offset after its last record */
    int32_t leader_epoch;
    int control;         /* a transaction's commit or abort marker: never returned as a record */
    int log_append_time; /* timestamps are the broker's (max_ts), not the records' */
    int64_t base_ts, max_ts;
    int32_t record_count;
    int codec; /* 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd (5-7: a codec Kafka does not have) */
    const uint8_t *records, *end;
    const char *error; /* BATCH_CORRUPT: what follows "Record batch for partition P at offset O" */
} BatchFrame;

/* The batch at ``b`` with ``remaining`` bytes left in the fetch. */
BatchStatus batch_frame(const uint8_t *b, size_t remaining, BatchFrame *f);

typedef struct {
    const uint8_t *begin, *end; /* the whole record */
    int64_t ts_delta, offset_delta;
    const uint8_t *key, *value, *headers;
    int64_t key_len, value_len, header_count; /* lengths -1: null */
} RecordFrame;

/* The record at ``*p`` (not past ``end``): 1 and ``*p`` moved past it, or 0 when malformed. */
int record_frame(const uint8_t **p, const uint8_t *end, RecordFrame *r);

#endif
