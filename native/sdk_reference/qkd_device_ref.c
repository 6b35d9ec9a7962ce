/* qkd_device_ref.c - reference implementation of qkd_device.h, backed by qkdd's photon-level simulator
 * (native/src/sim_*.c): each library handle runs the simulator of one link with the configured seed, so
 * the Alice handle and the Bob handle opened with the same configuration see the same frames; Alice's
 * handle reports the source's prepared states, Bob's his detections.
 *
 * Configuration string, comma-separated, each optional: "seed=N" (default 1), "distance_km=D" (25),
 * "detections=M" (records per frame, 250000), "fail_after=K" (read_frame fails with QKD_DEVICE_E_IO
 * from the K-th frame on: tests of the error path), "replay=1" (simulate the first frame only and hand
 * it out again under new frame ids: measures the ABI path without the simulator's cost; benchmarks only). The physics is the GYS system of qkdd's SimParams
 * defaults with decoy settings for small frames (tests/link_support.py TEST_SOURCE). Build:
 *     cc -std=c11 -O2 -D_GNU_SOURCE -shared -fPIC -Wl,-Bsymbolic -Inative/include -Inative/src \
 *        -o libqkd_device_ref.so native/sdk_reference/qkd_device_ref.c native/src/sim_chacha.c \
 *        native/src/sim_channel.c native/src/sim_sampler.c native/src/bits.c -lm
 * -DQKD_REF_ABI_VERSION=N builds a library that claims another ABI version (tests of the version check).
 */
#include "qkd_device.h"
#include "qkd_sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef QKD_REF_ABI_VERSION
#define QKD_REF_ABI_VERSION QKD_DEVICE_ABI_VERSION
#endif

#define FRAME_SLOTS 10000000000000ull      /* a frame ends at `detections` records, long before this */

struct qkd_device {
    int role, replay, simulated;
    uint64_t fail_after, next_frame, first_slot, slots_done, pulses[QKD_SIM_CLASSES];
    size_t n;
    size_t detections;
    qkd_sim *sim;
    qkd_sim_records columns;              /* the simulator's six columns, `detections` rows each */
    qkd_device_decoy_t decoy;
};

static const qkd_device_decoy_t SOURCE = {.mu_signal = 0.40, .mu_decoy = 0.13, .mu_vacuum = 0.0,
                                          .p_signal = 0.08, .p_decoy = 0.56, .q_x = 0.63};

uint32_t qkd_device_abi_version(void) { return QKD_REF_ABI_VERSION; }

static void free_device(qkd_device *device) {
    if (device == NULL) return;
    free(device->sim);
    free(device->columns.slot);
    free(device->columns.alice_bit);
    free(device->columns.alice_basis);
    free(device->columns.intensity);
    free(device->columns.bob_basis);
    free(device->columns.bob_outcome);
    free(device);
}

int qkd_device_open(const char *config, int role, qkd_device **out) {
    if (out == NULL || (role != QKD_DEVICE_ROLE_ALICE && role != QKD_DEVICE_ROLE_BOB)) return QKD_DEVICE_E_INVALID;
    unsigned long long seed = 1, detections = 250000, fail_after = UINT64_MAX;
    int replay = 0;
    double distance_km = 25.0;
    const char *p = config ? config : "";
    while (*p) {
        unsigned long long n;
        double d;
        if (sscanf(p, "seed=%llu", &n) == 1) seed = n;
        else if (sscanf(p, "detections=%llu", &n) == 1) detections = n;
        else if (sscanf(p, "fail_after=%llu", &n) == 1) fail_after = n;
        else if (sscanf(p, "replay=%llu", &n) == 1) replay = n != 0;
        else if (sscanf(p, "distance_km=%lf", &d) == 1 && d >= 0 && d <= 500) distance_km = d;
        else return QKD_DEVICE_E_INVALID;
        p = strchr(p, ',');
        if (p == NULL) break;
        p++;
    }
    if (detections == 0 || detections > (1ull << 26)) return QKD_DEVICE_E_INVALID;
    qkd_device *device = calloc(1, sizeof *device);
    if (device == NULL) return QKD_DEVICE_E_IO;
    device->role = role;
    device->replay = replay;
    device->fail_after = fail_after;
    device->detections = (size_t)detections;
    device->decoy = SOURCE;
    device->sim = malloc(qkd_sim_size());
    device->columns = (qkd_sim_records){malloc(detections * 8), malloc(detections), malloc(detections),
                                        malloc(detections), malloc(detections), malloc(detections)};
    if (device->sim == NULL || !device->columns.slot || !device->columns.alice_bit || !device->columns.alice_basis ||
        !device->columns.intensity || !device->columns.bob_basis || !device->columns.bob_outcome) {
        free_device(device);
        return QKD_DEVICE_E_IO;
    }
    qkd_sim_params params = {
        .protocol = QKD_SIM_BB84,
        .intensity = {SOURCE.mu_signal, SOURCE.mu_decoy, SOURCE.mu_vacuum},
        .class_prob = {SOURCE.p_signal, SOURCE.p_decoy, 1.0 - SOURCE.p_signal - SOURCE.p_decoy},
        .alice_z_prob = 1.0 - SOURCE.q_x, .bob_z_prob = 1.0 - SOURCE.q_x,
        .pair_mean = 0.01, .source_position_km = distance_km / 2, .e91_alice_prob = {0.5, 0.5},
        .e91_bob_prob = {0.25, 0.25, 0.25, 0.25},
        .fiber_loss_db_per_km = 0.21, .distance_km = distance_km, .detector_efficiency = 0.045,
        .dark_count_prob = 8.5e-7, .misalignment = 0.033, .afterpulse_prob = 0.0, .clock_hz = 1e9,
        .attack = QKD_SIM_ATTACK_NONE, .attack_fraction = 1.0, .blinding_power_w = 1e-3,
    };
    uint8_t key[32] = {0};
    for (int i = 0; i < 8; i++) key[i] = (uint8_t)(seed >> (8 * i));
    if (qkd_sim_init(device->sim, &params, key) != 0) {
        free_device(device);
        return QKD_DEVICE_E_INVALID;
    }
    *out = device;
    return QKD_DEVICE_OK;
}

void qkd_device_close(qkd_device *device) { free_device(device); }

int qkd_device_read_frame(qkd_device *device, qkd_device_frame_t *frame, uint64_t *slots, uint8_t *bases,
                          uint8_t *bits, uint8_t *intensities, size_t capacity) {
    if (device == NULL || frame == NULL || slots == NULL || bases == NULL || bits == NULL || intensities == NULL)
        return QKD_DEVICE_E_INVALID;
    if (device->next_frame >= device->fail_after) return QKD_DEVICE_E_IO;
    if (!(device->replay && device->simulated)) {
        device->first_slot = qkd_sim_position(device->sim);
        device->n = 0;
        if (qkd_sim_run(device->sim, FRAME_SLOTS, &device->columns, device->detections, &device->n,
                        &device->slots_done, device->pulses) != 0)
            return QKD_DEVICE_E_IO;
        device->simulated = 1;
    }
    size_t n = device->n;
    uint64_t first_slot = device->first_slot, slots_done = device->slots_done, *pulses = device->pulses;
    uint64_t frame_id = device->next_frame++;
    if (n > capacity) return QKD_DEVICE_E_BUFFER;     /* the frame is lost; both ends lose the same one */
    const qkd_sim_records *c = &device->columns;
    int alice = device->role == QKD_DEVICE_ROLE_ALICE;
    for (size_t i = 0; i < n; i++) {
        slots[i] = c->slot[i] - first_slot;
        bases[i] = alice ? c->alice_basis[i] : c->bob_basis[i];
        bits[i] = alice ? c->alice_bit[i] : c->bob_outcome[i];
        intensities[i] = alice ? c->intensity[i] : 0;
    }
    frame->frame_id = frame_id;
    frame->slot_count = slots_done;
    for (int k = 0; k < 3; k++) frame->pulses_per_intensity[k] = alice ? pulses[k] : 0;
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
    *decoy = device->decoy;
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
