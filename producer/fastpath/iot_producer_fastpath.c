/*
 * iot_producer_fastpath: the producer's native hot path - Kafka records of many readings at once.
 *
 *   murmur2(key) -> int   Kafka's key hash (the default partitioner's), ~100x kafka-python's
 *   encode_records(keys, stamps_us, temperatures, humidities, start, first_timestamp_ms,
 *                  first_offset_delta, room, at_least_one) -> (records, count, max_timestamp_ms)
 *
 * writes readings start, start+1, ... as message-format-v2 records (the part of a record batch
 * after its 61-byte header): length, attributes, timestamp and offset deltas, the key, the
 * reading's JSON as the value, no headers. It stops before the record that would make the
 * output longer than ``room`` bytes (but writes one at least when ``at_least_one``), so the
 * caller can append the result to an open kafka-python batch builder, which then writes the
 * header, the producer id, epoch and sequence, compresses and checks the CRC as it always does.
 *
 * The value is byte for byte what SensorReading.to_json() writes (orjson): the same key order,
 * the timestamp as datetime.isoformat() of a UTC instant, the floats in their shortest
 * round-trip form. What that form cannot be proven for here (a float this file would print with
 * an exponent, NaN, infinity, a key needing a JSON escape, a year outside 1..9999) raises
 * ValueError, and the caller sends that reading through kafka-python's own send() instead.
 * tests/unit/test_producer_fastpath.py holds both to the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ growable output */
typedef struct {
    char *data;
    size_t len, cap;
} Buffer;

static int buffer_reserve(Buffer *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (!data) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Kafka's varint: zigzag, then 7 bits per byte, low first. */
static size_t put_varint(char *out, int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    size_t n = 0;
    while (v > 0x7f) {
        out[n++] = (char)((v & 0x7f) | 0x80);
        v >>= 7;
    }
    out[n++] = (char)v;
    return n;
}

static size_t varint_size(int64_t value) {
    char scratch[10];
    return put_varint(scratch, value);
}

/* ------------------------------------------------------------------ the JSON value */

/* Days since 1970-01-01 -> proleptic Gregorian date (Howard Hinnant's civil_from_days). */
static void civil_from_days(int64_t z, int64_t *year, unsigned *month, unsigned *day) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *day = doy - (153 * mp + 2) / 5 + 1;
    *month = mp < 10 ? mp + 3 : mp - 9;
    *year = y + (*month <= 2);
}

/* datetime.isoformat() of the UTC instant stamp_us: no fraction when it is zero. */
static int put_timestamp(char *out, int64_t stamp_us, size_t *written) {
    /* 0001-01-01T00:00:00 .. 9999-12-31T23:59:59.999999 (and no overflow negating below) */
    if (stamp_us < -62135596800000000LL || stamp_us > 253402300799999999LL) return -1;
    int64_t seconds = stamp_us >= 0 ? stamp_us / 1000000 : -((-stamp_us + 999999) / 1000000);
    int64_t micros = stamp_us - seconds * 1000000;
    int64_t days = seconds >= 0 ? seconds / 86400 : -((-seconds + 86399) / 86400);
    int64_t of_day = seconds - days * 86400;
    int64_t year;
    unsigned month, day;
    civil_from_days(days, &year, &month, &day);
    if (year < 1 || year > 9999) return -1;
    int n = micros ? snprintf(out, 40, "%04d-%02u-%02uT%02d:%02d:%02d.%06d+00:00", (int)year, month, day,
                              (int)(of_day / 3600), (int)(of_day / 60 % 60), (int)(of_day % 60), (int)micros)
                   : snprintf(out, 40, "%04d-%02u-%02uT%02d:%02d:%02d+00:00", (int)year, month, day,
                              (int)(of_day / 3600), (int)(of_day / 60 % 60), (int)(of_day % 60));
    *written = (size_t)n;
    return 0;
}

/* The shortest text that reads back as exactly x, as repr() and orjson write it, for the values
 * that form has no exponent in; -1 for the others (the caller then leaves the reading to Python). */
static int put_float(char *out, double x, size_t *written) {
    if (!isfinite(x) || fabs(x) >= 1e15) return -1;
    char text[40];
    int n = 0;
    /* The simulation rounds to hundredths: "%.2f" without its trailing zeros is then the
     * shortest form, provided no decimal with fewer digits reads back as x too - true while
     * the spacing of doubles near x is below 0.01 (|x| < 2^45; 1e13 keeps a margin).
     * Anything else: the fewest significant digits that read back exactly. */
    n = snprintf(text, sizeof text, "%.2f", x);
    if (fabs(x) < 1e13 && strtod(text, NULL) == x) {
        while (n > 0 && text[n - 1] == '0') n--;
        if (text[n - 1] == '.') text[n++] = '0';
        text[n] = '\0';
    } else {
        int precision;
        for (precision = 1; precision <= 17; precision++) {
            n = snprintf(text, sizeof text, "%.*g", precision, x);
            if (strtod(text, NULL) == x) break;
        }
        if (strchr(text, 'e') && fabs(x) >= 1) {
            /* fewer significant digits than integer digits: x is that integer, which repr
             * writes out in full below 1e16 */
            n = snprintf(text, sizeof text, "%.0f", x);
        } else if (strchr(text, 'e')) {
            return -1; /* below 1e-4: repr's exponent form, left to Python */
        }
        if (!strchr(text, '.')) {
            text[n++] = '.';
            text[n++] = '0';
            text[n] = '\0';
        }
    }
    memcpy(out, text, (size_t)n);
    *written = (size_t)n;
    return 0;
}

/* A key goes into the JSON unescaped: printable ASCII without '"' or '\\' only. */
static int key_is_plain(const char *key, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') return 0;
    }
    return 1;
}

#define VALUE_MAX 256

/* {"sensor_id":"<key>","timestamp":"<iso>","temperatura":<t>,"umidade":<h>} */
static int put_value(char *out, const char *key, Py_ssize_t key_len, int64_t stamp_us, double t, double h,
                     size_t *written) {
    static const char a[] = "{\"sensor_id\":\"", b[] = "\",\"timestamp\":\"", c[] = "\",\"temperatura\":",
                      d[] = ",\"umidade\":";
    size_t n = 0, part;
    if (key_len > 64 || !key_is_plain(key, key_len)) return -1;
    memcpy(out + n, a, sizeof a - 1);
    n += sizeof a - 1;
    memcpy(out + n, key, (size_t)key_len);
    n += (size_t)key_len;
    memcpy(out + n, b, sizeof b - 1);
    n += sizeof b - 1;
    if (put_timestamp(out + n, stamp_us, &part) < 0) return -1;
    n += part;
    memcpy(out + n, c, sizeof c - 1);
    n += sizeof c - 1;
    if (put_float(out + n, t, &part) < 0) return -1;
    n += part;
    memcpy(out + n, d, sizeof d - 1);
    n += sizeof d - 1;
    if (put_float(out + n, h, &part) < 0) return -1;
    n += part;
    out[n++] = '}';
    *written = n;
    return 0;
}

/* ------------------------------------------------------------------ encode_records */
static int64_t floor_div_1000(int64_t v) { return v >= 0 ? v / 1000 : -((-v + 999) / 1000); }

static PyObject *encode_records(PyObject *self, PyObject *args) {
    PyObject *keys, *stamps, *temperatures, *humidities;
    Py_ssize_t start, room;
    long long first_timestamp_ms, first_offset_delta;
    int at_least_one;
    if (!PyArg_ParseTuple(args, "O!O!O!O!nLLnp:encode_records", &PyList_Type, &keys, &PyList_Type, &stamps,
                          &PyList_Type, &temperatures, &PyList_Type, &humidities, &start, &first_timestamp_ms,
                          &first_offset_delta, &room, &at_least_one))
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(stamps) != total || PyList_GET_SIZE(temperatures) != total ||
        PyList_GET_SIZE(humidities) != total) {
        PyErr_SetString(PyExc_ValueError, "keys, stamps_us, temperatures and humidities differ in length");
        return NULL;
    }
    if (start < 0 || start > total) {
        PyErr_SetString(PyExc_IndexError, "start is outside the readings");
        return NULL;
    }
    if (room < 0) room = 0; /* a batch_size below the header's size: one record per batch */
    Buffer out = {0};
    int64_t max_timestamp_ms = first_timestamp_ms;
    Py_ssize_t i;
    for (i = start; i < total; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i), *stamp = PyList_GET_ITEM(stamps, i);
        PyObject *t = PyList_GET_ITEM(temperatures, i), *h = PyList_GET_ITEM(humidities, i);
        if (!PyBytes_Check(key) || !PyLong_Check(stamp)) {
            PyErr_Format(PyExc_TypeError, "reading %zd: expected a bytes key and an int timestamp", i);
            goto fail;
        }
        /* An int value (orjson writes 30, not 30.0) or a timestamp past 64 bits: Python's job. */
        int overflow = 0;
        long long stamp_us = PyLong_AsLongLongAndOverflow(stamp, &overflow);
        if (stamp_us == -1 && PyErr_Occurred()) goto fail;
        if (overflow || !PyFloat_CheckExact(t) || !PyFloat_CheckExact(h)) {
            PyErr_Format(PyExc_ValueError, "reading %zd has no exact native JSON form", i);
            goto fail;
        }
        char value[VALUE_MAX];
        size_t value_len;
        const char *key_data = PyBytes_AS_STRING(key);
        Py_ssize_t key_len = PyBytes_GET_SIZE(key);
        if (put_value(value, key_data, key_len, stamp_us, PyFloat_AS_DOUBLE(t), PyFloat_AS_DOUBLE(h), &value_len) <
            0) {
            PyErr_Format(PyExc_ValueError, "reading %zd has no exact native JSON form", i);
            goto fail;
        }
        int64_t timestamp_ms = floor_div_1000(stamp_us);
        int64_t offset_delta = first_offset_delta + (i - start);
        char head[40];
        size_t head_len = 1; /* attributes: 0 */
        head[0] = 0;
        head_len += put_varint(head + head_len, timestamp_ms - first_timestamp_ms);
        head_len += put_varint(head + head_len, offset_delta);
        head_len += put_varint(head + head_len, key_len);
        size_t body_len = head_len + (size_t)key_len + varint_size((int64_t)value_len) + value_len + 1;
        size_t record_len = varint_size((int64_t)body_len) + body_len;
        if (out.len + record_len > (size_t)room && !(at_least_one && i == start)) break;
        if (buffer_reserve(&out, record_len) < 0) goto fail;
        char *p = out.data + out.len;
        p += put_varint(p, (int64_t)body_len);
        memcpy(p, head, head_len);
        p += head_len;
        memcpy(p, key_data, (size_t)key_len);
        p += key_len;
        p += put_varint(p, (int64_t)value_len);
        memcpy(p, value, value_len);
        p += value_len;
        *p++ = 0; /* no headers */
        out.len += record_len;
        if (timestamp_ms > max_timestamp_ms) max_timestamp_ms = timestamp_ms;
    }
    PyObject *records = PyBytes_FromStringAndSize(out.data ? out.data : "", (Py_ssize_t)out.len);
    PyMem_Free(out.data);
    if (!records) return NULL;
    return Py_BuildValue("NnL", records, i - start, (long long)max_timestamp_ms);
fail:
    PyMem_Free(out.data);
    return NULL;
}

/* ------------------------------------------------------------------ murmur2 */
/* Kafka's key hash (org.apache.kafka.common.utils.Utils.murmur2, as kafka-python's pure-Python
 * copy computes it): the default partitioner takes (murmur2(key) & 0x7fffffff) % partitions. */
static uint32_t kafka_murmur2(const unsigned char *data, size_t length) {
    const uint32_t m = 0x5bd1e995;
    const int r = 24;
    uint32_t h = 0x9747b28cu ^ (uint32_t)length;
    size_t length4 = length / 4;
    for (size_t i = 0; i < length4; i++) {
        const unsigned char *q = data + 4 * i;
        uint32_t k = (uint32_t)q[0] | ((uint32_t)q[1] << 8) | ((uint32_t)q[2] << 16) | ((uint32_t)q[3] << 24);
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *tail = data + (length & ~(size_t)3);
    switch (length % 4) {
    case 3:
        h ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2:
        h ^= (uint32_t)tail[1] << 8; /* fall through */
    case 1:
        h ^= (uint32_t)tail[0];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

static PyObject *murmur2(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t h = kafka_murmur2((const unsigned char *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(h);
}

static PyMethodDef module_methods[] = {
    {"murmur2", murmur2, METH_O, "murmur2(key) -> Kafka's murmur2 hash of the key, as an unsigned 32-bit int"},
    {"encode_records", encode_records, METH_VARARGS,
     "encode_records(keys, stamps_us, temperatures, humidities, start, first_timestamp_ms, first_offset_delta, "
     "room, at_least_one) -> (records, count, max_timestamp_ms)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "iot_producer_fastpath", "Kafka records of many readings at once, for iot-producer.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit_iot_producer_fastpath(void) { return PyModule_Create(&module); }
