/* qkd_device.h - the C ABI a vendor implements so that qkdd drives its QKD device (driver = "sdk").
 *
 * qkdd loads the vendor's shared library at run time (`[links.sdk] sdk_library = "/path/libvendor.so"`)
 * and calls only the functions below. Rules:
 *   - qkd_device_abi_version() returns QKD_DEVICE_ABI_VERSION of the header the library was built with;
 *     qkdd refuses a library of another version before calling anything else.
 *   - Every other function returns QKD_DEVICE_OK (0) or a negative QKD_DEVICE_E_* code;
 *     qkd_device_strerror(code) gives a static, printable, one-line message (no key material, ever).
 *   - A handle is used by one thread at a time; qkdd calls read_frame from a worker thread and may call
 *     status from another, so status must be safe while read_frame blocks (or return E_AGAIN).
 *   - Buffers belong to the caller; every buffer comes with its capacity in records.
 * Records are one per detected time slot, slot-sorted, strictly increasing slot numbers relative to the
 * frame start: basis 0 = Z, 1 = X; bit 0/1 (the source's prepared bit at Alice, the detector's outcome at
 * Bob); intensity class 0 signal, 1 decoy, 2 vacuum (Alice; Bob writes 0).
 * This header is for vendors and for qkdd's loader (qkdd/hal/sdk/abi.py repeats the declarations for
 * cffi's ABI mode; tests/test_driver_sdk.py checks the two agree). It is not part of qkdd._native.
 */
#ifndef QKD_DEVICE_H
#define QKD_DEVICE_H

#include <stddef.h>
#include <stdint.h>

/* sdk:begin */
#define QKD_DEVICE_ABI_VERSION 1

#define QKD_DEVICE_OK 0
#define QKD_DEVICE_E_INVALID -1     /* a bad argument or configuration string */
#define QKD_DEVICE_E_IO -2          /* the device failed or is disconnected */
#define QKD_DEVICE_E_AGAIN -3       /* nothing yet: call again (read_frame may also just block) */
#define QKD_DEVICE_E_BUFFER -4      /* the frame holds more records than the capacity; the frame is lost */
#define QKD_DEVICE_E_NOT_READY -5   /* the device is warming up or calibrating */

#define QKD_DEVICE_ROLE_ALICE 0
#define QKD_DEVICE_ROLE_BOB 1

typedef struct qkd_device qkd_device;

typedef struct {
    uint64_t frame_id;                  /* increasing; both ends' devices number the same frame alike */
    uint64_t slot_count;                /* time slots the frame spans */
    uint64_t pulses_per_intensity[3];   /* Alice: pulses sent per intensity class; Bob: 0 */
    uint64_t records;                   /* records written to the buffers */
} qkd_device_frame_t;

typedef struct {
    int32_t ok;                         /* 1 healthy, 0 not */
    double temperature_c;
    double uptime_s;
    char detail[128];                   /* NUL-terminated, printable */
} qkd_device_status_t;

typedef struct {                        /* Alice's decoy-state source (Lim et al., PRA 89, 022307 (2014)) */
    double mu_signal, mu_decoy, mu_vacuum;
    double p_signal, p_decoy;           /* probabilities of signal and decoy; vacuum is the rest */
    double q_x;                         /* probability of the X basis */
} qkd_device_decoy_t;

uint32_t qkd_device_abi_version(void);
int qkd_device_open(const char *config, int role, qkd_device **out);
void qkd_device_close(qkd_device *device);
int qkd_device_read_frame(qkd_device *device, qkd_device_frame_t *frame, uint64_t *slots, uint8_t *bases,
                          uint8_t *bits, uint8_t *intensities, size_t capacity);
int qkd_device_status(qkd_device *device, qkd_device_status_t *status);
int qkd_device_decoy(qkd_device *device, qkd_device_decoy_t *decoy);
const char *qkd_device_strerror(int code);
/* sdk:end */

#endif
