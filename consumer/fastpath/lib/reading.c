/* The strict reading form: {"sensor_id": UUID, "timestamp": ISO-8601 UTC, "temperatura": number,
   "umidade": number} in any order, plain strings, within the limits. */
#include "reading.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "calendar.h"

static inline int hex_value(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "8-4-4-4-12" hex, any case (the validator's regex) -> 16 bytes; 0 if not that form. */
int parse_uuid(const uint8_t *s, size_t n, uint8_t id[16]) {
    if (n != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-') return 0;
    int k = 0;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) continue;
        int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
        if (hi < 0 || lo < 0) return 0;
        id[k++] = (uint8_t)(hi << 4 | lo);
        i++;
    }
    return 1;
}


static inline const uint8_t *skip_ws(const uint8_t *p, const uint8_t *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* A JSON string without escapes or control characters: [*start, *len). */
static inline const uint8_t *plain_string(const uint8_t *p, const uint8_t *end, const uint8_t **start, size_t *len) {
    if (p >= end || *p != '"') return NULL;
    const uint8_t *s = ++p;
    while (p < end && *p != '"') {
        if (*p == '\\' || *p < 0x20 || *p >= 0x80) return NULL;
        p++;
    }
    if (p >= end) return NULL;
    *start = s;
    *len = (size_t)(p - s);
    return p + 1;
}

static inline int two(const uint8_t *s) {
    return (s[0] >= '0' && s[0] <= '9' && s[1] >= '0' && s[1] <= '9') ? (s[0] - '0') * 10 + (s[1] - '0') : -1;
}

/* YYYY-MM-DDTHH:MM:SS[.fff|.ffffff](+00:00|Z): the instant in µs since the epoch; 0 if another form. */
static int parse_utc_timestamp(const uint8_t *s, size_t n, int64_t *out) {
    if (n < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':') return 0;
    int y1 = two(s), y2 = two(s + 2), mo = two(s + 5), d = two(s + 8), hh = two(s + 11), mi = two(s + 14),
        ss = two(s + 17);
    if (y1 < 0 || y2 < 0 || mo < 1 || mo > 12 || d < 1 || hh < 0 || hh > 23 || mi < 0 || mi > 59 || ss < 0 || ss > 59)
        return 0;
    int year = y1 * 100 + y2;
    static const int month_days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (year < 1 || d > month_days[mo - 1] + (mo == 2 && leap)) return 0;
    size_t i = 19;
    int64_t micro = 0;
    if (i < n && s[i] == '.') {
        size_t digits = 0;
        i++;
        while (i + digits < n && s[i + digits] >= '0' && s[i + digits] <= '9') digits++;
        if (digits != 3 && digits != 6) return 0;
        for (size_t k = 0; k < digits; k++) micro = micro * 10 + (s[i + k] - '0');
        if (digits == 3) micro *= 1000;
        i += digits;
    }
    if (!((n - i == 1 && s[i] == 'Z') || (n - i == 6 && memcmp(s + i, "+00:00", 6) == 0))) return 0;
    int64_t days = days_from_civil(year, mo, d);
    *out = ((days * 24 + hh) * 60 + mi) * 60000000LL + (int64_t)ss * 1000000LL + micro;
    return 1;
}

/* A JSON number token (strict grammar) within [low, high]. */
static const uint8_t *number(const uint8_t *p, const uint8_t *end, double low, double high, double *value,
                             const uint8_t **text, size_t *len, int *negative_zero_int) {
    const uint8_t *s = p;
    int integer = 1;
    if (p < end && *p == '-') p++;
    if (p >= end) return NULL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return NULL;
    }
    if (p < end && *p == '.') {
        integer = 0;
        p++;
        const uint8_t *f = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == f) return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        integer = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        const uint8_t *e = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == e) return NULL;
    }
    size_t n = (size_t)(p - s);
    if (n >= 48) return NULL;
    char tmp[48];
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *stop = NULL;
    double v = strtod(tmp, &stop);
    if (stop != tmp + n || !isfinite(v) || !(v >= low && v <= high)) return NULL;
    *value = v;
    *text = s;
    *len = n;
    /* JSON "-0" is the integer 0 for the validator (written "0"); "-0.0" stays a float. */
    *negative_zero_int = integer && s[0] == '-' && v == 0.0;
    return p;
}

enum { F_SENSOR = 1, F_STAMP = 2, F_TEMP = 4, F_HUM = 8 };

/* 1: the value is a reading in the strict form (fields filled); 0: the Python validator decides. */
int parse_reading(const uint8_t *p, int64_t size, const Limits *lim, Parsed *r) {
    if (size <= 0 || size > lim->max_payload) return 0;
    const uint8_t *end = p + size;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return 0;
    p++;
    int seen = 0;
    for (int field = 0; field < 4; field++) {
        const uint8_t *key;
        size_t key_len;
        p = skip_ws(p, end);
        p = plain_string(p, end, &key, &key_len);
        if (!p) return 0;
        p = skip_ws(p, end);
        if (p >= end || *p != ':') return 0;
        p = skip_ws(p + 1, end);
        if (key_len == 9 && memcmp(key, "sensor_id", 9) == 0 && !(seen & F_SENSOR)) {
            const uint8_t *s;
            size_t n;
            p = plain_string(p, end, &s, &n);
            if (!p || !parse_uuid(s, n, r->sensor)) return 0;
            seen |= F_SENSOR;
        } else if (key_len == 9 && memcmp(key, "timestamp", 9) == 0 && !(seen & F_STAMP)) {
            p = plain_string(p, end, &r->stamp_text, &r->stamp_len);
            if (!p || !parse_utc_timestamp(r->stamp_text, r->stamp_len, &r->stamp_us)) return 0;
            if (r->stamp_us < lim->earliest_us || r->stamp_us > lim->latest_us) return 0;
            seen |= F_STAMP;
        } else if (key_len == 11 && memcmp(key, "temperatura", 11) == 0 && !(seen & F_TEMP)) {
            p = number(p, end, lim->t_min, lim->t_max, &r->t, &r->t_text, &r->t_len, &r->t_negative_zero_int);
            if (!p) return 0;
            seen |= F_TEMP;
        } else if (key_len == 7 && memcmp(key, "umidade", 7) == 0 && !(seen & F_HUM)) {
            p = number(p, end, lim->h_min, lim->h_max, &r->h, &r->h_text, &r->h_len, &r->h_negative_zero_int);
            if (!p) return 0;
            seen |= F_HUM;
        } else {
            return 0; /* another field, or one repeated */
        }
        p = skip_ws(p, end);
        if (p >= end) return 0;
        if (field < 3) {
            if (*p != ',') return 0;
            p++;
        } else if (*p != '}') {
            return 0;
        }
    }
    p = skip_ws(p + 1, end);
    return p == end;
}
