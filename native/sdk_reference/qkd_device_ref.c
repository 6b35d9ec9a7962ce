/* qkd_device_ref.c - reference implementation of qkd_device.h: a seeded model of a decoy-BB84 device
 * pair, so that two libraries opened with the same configuration (one per role) produce matching frames.
 *
 * Configuration string: "seed=N,records=M,qber=Q,fail_after=K" (each optional): M records per frame,
 * Bob's outcome differs from Alice's bit with probability Q in matching bases, and read_frame fails with
 * QKD_DEVICE_E_IO from the K-th frame on (tests of the error path). Build:
 *     cc -std=c11 -O2 -shared -fPIC -Inative/include -o libqkd_device_ref.so native/sdk_reference/qkd_device_ref.c
 * -DQKD_REF_ABI_VERSION=N builds a library that claims another ABI version (tests of the version check).
 */
#include "qkd_device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef QKD_REF_ABI_VERSION
#define QKD_REF_ABI_VERSION QKD_DEVICE_ABI_VERSION
#endif

struct qkd_device {
    int role;
    uint64_t seed, records_per_frame, fail_after, next_frame;
    double qber;
};

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *state) { return (double)(splitmix64(state) >> 11) * 0x1.0p-53; }

uint32_t qkd_device_abi_version(void) { return QKD_REF_ABI_VERSION; }

int qkd_device_open(const char *config, int role, qkd_device **out) {
    if (out == NULL || (role != QKD_DEVICE_ROLE_ALICE && role != QKD_DEVICE_ROLE_BOB)) return QKD_DEVICE_E_INVALID;
    qkd_device device = {.role = role, .seed = 1, .records_per_frame = 100000, .fail_after = UINT64_MAX, .qber = 0.02};
    const char *p = config ? config : "";
    while (*p) {
        unsigned long long n;
        double q;
        if (sscanf(p, "seed=%llu", &n) == 1) device.seed = n;
        else if (sscanf(p, "records=%llu", &n) == 1) device.records_per_frame = n;
        else if (sscanf(p, "fail_after=%llu", &n) == 1) device.fail_after = n;
        else if (sscanf(p, "qber=%lf", &q) == 1 && q >= 0 && q <= 0.5) device.qber = q;
        else return QKD_DEVICE_E_INVALID;
        p = strchr(p, ',');
        if (p == NULL) break;
        p++;
    }
    if (device.records_per_frame == 0) return QKD_DEVICE_E_INVALID;
    *out = malloc(sizeof **out);
    if (*out == NULL) return QKD_DEVICE_E_IO;
    **out = device;
    return QKD_DEVICE_OK;
}

void qkd_device_close(qkd_device *device) { free(device); }

int qkd_device_read_frame(qkd_device *device, qkd_device_frame_t *frame, uint64_t *slots, uint8_t *bases,
                          uint8_t *bits, uint8_t *intensities, size_t capacity) {
    if (device == NULL || frame == NULL || slots == NULL || bases == NULL || bits == NULL || intensities == NULL)
        return QKD_DEVICE_E_INVALID;
    if (device->next_frame >= device->fail_after) return QKD_DEVICE_E_IO;
    uint64_t n = device->records_per_frame;
    uint64_t frame_id = device->next_frame++;
    if (n > capacity) return QKD_DEVICE_E_BUFFER;
    /* the shared randomness of both ends' frame: one stream per frame; Bob's own choices from another */
    uint64_t shared = device->seed * 0x100000001B3ull ^ frame_id;
    uint64_t own = shared ^ 0xD1B54A32D192ED03ull;
    uint64_t slot = 0, pulses[3] = {0, 0, 0};
    for (uint64_t i = 0; i < n; i++) {
        uint64_t r = splitmix64(&shared);
        slot += 1 + (r & 0xFF);                            /* gaps between detected slots */
        uint8_t alice_basis = (r >> 8) & 1, alice_bit = (r >> 9) & 1, intensity = (uint8_t)(((r >> 10) & 0xFF) % 3);
        pulses[intensity] += 1 + (r & 0xFF);
        slots[i] = slot;
        if (device->role == QKD_DEVICE_ROLE_ALICE) {
            bases[i] = alice_basis;
            bits[i] = alice_bit;
            intensities[i] = intensity;
        } else {
            uint8_t basis = (uint8_t)(splitmix64(&own) & 1);
            double u = uniform(&own);
            bases[i] = basis;
            bits[i] = basis == alice_basis ? (uint8_t)(alice_bit ^ (u < device->qber)) : (uint8_t)(u < 0.5);
            intensities[i] = 0;
        }
    }
    frame->frame_id = frame_id;
    frame->slot_count = slot + 1;
    for (int k = 0; k < 3; k++) frame->pulses_per_intensity[k] = device->role == QKD_DEVICE_ROLE_ALICE ? pulses[k] : 0;
    frame->records = n;
    return QKD_DEVICE_OK;
}

int qkd_device_status(qkd_device *device, qkd_device_status_t *status) {
    if (device == NULL || status == NULL) return QKD_DEVICE_E_INVALID;
    status->ok = device->next_frame < device->fail_after;
    status->temperature_c = 21.5;
    status->uptime_s = (double)device->next_frame;
    snprintf(status->detail, sizeof status->detail, "reference device, %llu frames",
             (unsigned long long)device->next_frame);
    return QKD_DEVICE_OK;
}

int qkd_device_decoy(qkd_device *device, qkd_device_decoy_t *decoy) {
    if (device == NULL || decoy == NULL) return QKD_DEVICE_E_INVALID;
    if (device->role != QKD_DEVICE_ROLE_ALICE) return QKD_DEVICE_E_INVALID;
    *decoy = (qkd_device_decoy_t){.mu_signal = 0.43, .mu_decoy = 0.20, .mu_vacuum = 0.0, .p_signal = 0.20,
                                .p_decoy = 0.55, .q_x = 0.78};
    return QKD_DEVICE_OK;
}

const char *qkd_device_strerror(int code) {
    switch (code) {
    case QKD_DEVICE_OK: return "ok";
    case QKD_DEVICE_E_INVALID: return "invalid argument or configuration";
    case QKD_DEVICE_E_IO: return "device input/output error (disconnected?)";
    case QKD_DEVICE_E_AGAIN: return "no frame yet";
    case QKD_DEVICE_E_BUFFER: return "frame larger than the buffer";
    case QKD_DEVICE_E_NOT_READY: return "device not ready";
    default: return "unknown error";
    }
}
