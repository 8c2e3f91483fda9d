/* CRC-32C (Castagnoli), as Kafka's record batches use it. */
#ifndef IOT_FASTPATH_CRC32C_H
#define IOT_FASTPATH_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Fill the tables and detect SSE 4.2; call once before crc32c(). */
void crc32c_init(void);
uint32_t crc32c(const uint8_t *p, size_t n);
/* The table implementation alone (what runs without SSE 4.2), for tests. */
uint32_t crc32c_software(const uint8_t *p, size_t n);
int crc32c_hardware_enabled(void);

#endif
