/*
 * A stand-in for the NVIDIA driver's libnvidia-ml.so.1 on machines without an NVIDIA GPU.
 *
 * It serves one host, read at nvmlInit from a profile file (FAKE_NVML_PROFILE) that
 * tests/nvml_standin.py writes from the same host profiles the stand-in nvidia-smi serves
 * (tests/fixtures/nvidia-smi/<profile>.json). It follows nvml.h where the exporter depends on it:
 * the function names and signatures, nvmlReturn_t codes, nvmlPciInfo_t, nvmlMemory_t,
 * nvmlUtilization_t and the 40-byte nvmlFieldValue_t, and per-element nvmlReturn in field values.
 *
 * Profile file: lines `key value`. `driver 535.247.01` once, then per GPU `gpu` followed by
 * name, uuid, bus, arch (nvmlDeviceArchitecture_t: 3 Maxwell ... 9 Hopper), mig, power_mw,
 * power_avg_mw, power_inst_mw, limit_mw, temp, mem_temp, util_gpu, util_mem, mem_total, mem_used,
 * clock_sm, clock_mem, fan, pstate, reasons. A key that is absent answers NVML_ERROR_NOT_SUPPORTED.
 *
 * The energy counter (Volta, arch 5, and later; NOT_SUPPORTED before) starts at a large value and
 * rises at exactly power_mw: mW x seconds = mJ, so the tests know the watts it rises at.
 *
 * Knobs (environment, read at nvmlInit):
 *   FAKE_NVML_PROFILE        the profile file (required)
 *   FAKE_NVML_INIT_ERROR     nvmlInit returns this code (9 driver not loaded, 18 version mismatch)
 *   FAKE_NVML_LOST           N:R[:K]  GPU N answers NVML_ERROR_GPU_IS_LOST from its R-th power read
 *                            on; with K, it is back after K more nvmlInit calls
 *   FAKE_NVML_UNLOAD         R[:K]  from the R-th power read of any GPU every call answers
 *                            NVML_ERROR_DRIVER_NOT_LOADED (the driver went away), and the next K
 *                            nvmlInit calls too; then the driver is back
 *   FAKE_NVML_COUNTER_RESET  R  the energy counter of every GPU starts again near 0 at the R-th
 *                            energy read (a driver reload)
 *   FAKE_NVML_HANG           R  the R-th nvmlDeviceGetPowerUsage call (counted over all GPUs) blocks
 *                            for FAKE_NVML_HANG_S seconds (default 3600), like a wedged driver
 *   FAKE_NVML_LOG            append one line per energy read (`energy <index> <mJ>`), per
 *                            nvmlInit (`init <code>`) and per nvmlShutdown to this file
 *
 * Built with -DFAKE_NVML_OLD_DRIVER it stands for an R390-era library: no nvmlInitWithFlags,
 * no _v2 count/handle calls, no nvmlDeviceGetFieldValues, no energy counter, no
 * nvmlDeviceGetCurrentClocksEventReasons (only the older ThrottleReasons name), no
 * nvmlDeviceGetArchitecture, no nvmlDeviceGetPciInfo_v3.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 16
#define UNSET (-1LL)

typedef struct {
    char name[96], uuid[96], bus[32];
    long long arch, mig, power_mw, power_avg_mw, power_inst_mw, limit_mw, temp, mem_temp;
    long long util_gpu, util_mem, mem_total, mem_used, clock_sm, clock_mem, fan, pstate, reasons;
    long long power_reads;
    double energy_base_s;      /* monotonic seconds where the counter's rise started */
    unsigned long long energy_base_mj;
} gpu_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned int fieldId, scopeId;
    long long timestamp, latencyUsec;
    unsigned int valueType, nvmlReturn;
    union { double d; unsigned int ui; unsigned long ul; unsigned long long ull; long long sll; } value;
} nvmlFieldValue_t;

_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t is 40 bytes in nvml.h");

static gpu_t gpus[MAX_GPUS];
static int gpu_count = -1;
static int initialised = 0;
static char driver[80] = "0.0";
static int lost_gpu = -1, unload_held = 0, unloaded = 0;
static long long lost_from = 0, lost_inits = -1, unload_from = 0, unload_inits = 0;
static long long reset_at = 0, hang_at = 0, power_calls = 0;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void log_line(const char *format, long long a, long long b) {
    const char *path = getenv("FAKE_NVML_LOG");
    if (!path) return;
    FILE *out = fopen(path, "a");
    if (!out) return;
    fprintf(out, format, a, b);
    fclose(out);
}

static long long env_number(const char *name, long long fallback) {
    const char *text = getenv(name);
    return text && *text ? atoll(text) : fallback;
}

static void set_number(gpu_t *g, const char *key, long long v) {
    struct { const char *key; long long *slot; } slots[] = {
        {"arch", &g->arch}, {"mig", &g->mig}, {"power_mw", &g->power_mw}, {"power_avg_mw", &g->power_avg_mw},
        {"power_inst_mw", &g->power_inst_mw}, {"limit_mw", &g->limit_mw}, {"temp", &g->temp},
        {"mem_temp", &g->mem_temp}, {"util_gpu", &g->util_gpu}, {"util_mem", &g->util_mem},
        {"mem_total", &g->mem_total}, {"mem_used", &g->mem_used}, {"clock_sm", &g->clock_sm},
        {"clock_mem", &g->clock_mem}, {"fan", &g->fan}, {"pstate", &g->pstate}, {"reasons", &g->reasons},
    };
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
        if (strcmp(key, slots[i].key) == 0) *slots[i].slot = v;
}

static int load_profile(void) {
    const char *path = getenv("FAKE_NVML_PROFILE");
    FILE *in = path ? fopen(path, "r") : NULL;
    if (!in) return 0;
    char line[512], key[64], value[400];
    gpu_count = 0;
    gpu_t *g = NULL;
    while (fgets(line, sizeof line, in)) {
        value[0] = 0;
        if (sscanf(line, "%63s %399[^\n]", key, value) < 1) continue;
        if (strcmp(key, "driver") == 0) {
            snprintf(driver, sizeof driver, "%s", value);
        } else if (strcmp(key, "gpu") == 0 && gpu_count < MAX_GPUS) {
            g = &gpus[gpu_count++];
            memset(g, 0, sizeof *g);
            long long *numbers = &g->arch;
            for (int i = 0; i < 17; i++) numbers[i] = UNSET;
            g->energy_base_s = now_s();
            g->energy_base_mj = 123456789ULL + 1000003ULL * gpu_count;
        } else if (g && strcmp(key, "name") == 0) {
            snprintf(g->name, sizeof g->name, "%s", value);
        } else if (g && strcmp(key, "uuid") == 0) {
            snprintf(g->uuid, sizeof g->uuid, "%s", value);
        } else if (g && strcmp(key, "bus") == 0) {
            snprintf(g->bus, sizeof g->bus, "%s", value);
        } else if (g) {
            set_number(g, key, strtoll(value, NULL, 0));
        }
    }
    fclose(in);
    return 1;
}

static void read_knobs(void) {
    const char *lost = getenv("FAKE_NVML_LOST");
    if (lost && *lost) {
        long long n = -1, r = 0, k = -1;
        sscanf(lost, "%lld:%lld:%lld", &n, &r, &k);
        lost_gpu = (int)n;
        lost_from = r;
        lost_inits = k;
    }
    const char *unload = getenv("FAKE_NVML_UNLOAD");
    if (unload && *unload) sscanf(unload, "%lld:%lld", &unload_from, &unload_inits);
    reset_at = env_number("FAKE_NVML_COUNTER_RESET", 0);
    hang_at = env_number("FAKE_NVML_HANG", 0);
}

static nvmlReturn_t init_common(void) {
    static int knobs_read = 0;
    if (!knobs_read) {
        knobs_read = 1;
        read_knobs();
    }
    nvmlReturn_t code = (nvmlReturn_t)env_number("FAKE_NVML_INIT_ERROR", 0);
    if (unloaded) {
        if (unload_held-- > 0) code = NVML_ERROR_DRIVER_NOT_LOADED;
        else unloaded = 0;
    }
    if (lost_gpu >= 0 && lost_inits >= 0 && lost_from < 0 && --lost_inits <= 0) lost_gpu = -1;
    if (code == NVML_SUCCESS && gpu_count < 0 && !load_profile()) code = NVML_ERROR_DRIVER_NOT_LOADED;
    log_line("init %lld%lld\n", code, 0);
    if (code != NVML_SUCCESS) return code;
    initialised++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit(void) { return init_common(); }
nvmlReturn_t nvmlInit_v2(void) { return init_common(); }
#ifndef FAKE_NVML_OLD_DRIVER
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return init_common(); }
#endif

nvmlReturn_t nvmlShutdown(void) {
    log_line("shutdown %lld%lld\n", 0, 0);
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t code) {
    switch (code) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    default: return "Unknown Error";
    }
}

/* Every device call starts here: is the library usable, is the handle one of ours, is the GPU there. */
static nvmlReturn_t device_state(void *device, gpu_t **out) {
    if (unloaded) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    gpu_t *g = (gpu_t *)device;
    if (g < gpus || g >= gpus + gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    if ((int)(g - gpus) == lost_gpu && lost_from < 0) return NVML_ERROR_GPU_IS_LOST;
    *out = g;
    return NVML_SUCCESS;
}

static nvmlReturn_t count(unsigned int *n) {
    if (unloaded) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *n = (unsigned int)gpu_count;
    return NVML_SUCCESS;
}

static nvmlReturn_t handle(unsigned int index, void **device) {
    if (unloaded) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if ((int)index >= gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    if ((int)index == lost_gpu && lost_from < 0) return NVML_ERROR_GPU_IS_LOST;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { return count(n); }
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, void **d) { return handle(i, d); }
#ifndef FAKE_NVML_OLD_DRIVER
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) { return count(n); }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **d) { return handle(i, d); }
#endif

nvmlReturn_t nvmlSystemGetDriverVersion(char *out, unsigned int length) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (strlen(driver) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, driver);
    return NVML_SUCCESS;
}

static nvmlReturn_t text(void *device, const char *which, char *out, unsigned int length) {
    gpu_t *g;
    nvmlReturn_t code = device_state(device, &g);
    if (code) return code;
    const char *value = strcmp(which, "name") == 0 ? g->name : g->uuid;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, value);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(void *d, char *out, unsigned int n) { return text(d, "name", out, n); }
nvmlReturn_t nvmlDeviceGetUUID(void *d, char *out, unsigned int n) { return text(d, "uuid", out, n); }

static nvmlReturn_t pci(void *device, nvmlPciInfo_t *info) {
    gpu_t *g;
    nvmlReturn_t code = device_state(device, &g);
    if (code) return code;
    memset(info, 0, sizeof *info);
    snprintf(info->busId, sizeof info->busId, "%s", g->bus);
    snprintf(info->busIdLegacy, sizeof info->busIdLegacy, "%s", g->bus + (strlen(g->bus) > 12 ? 4 : 0));
    sscanf(g->bus, "%x:%x:%x", &info->domain, &info->bus, &info->device);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo(void *d, nvmlPciInfo_t *p) { return pci(d, p); }
nvmlReturn_t nvmlDeviceGetPciInfo_v2(void *d, nvmlPciInfo_t *p) { return pci(d, p); }
#ifndef FAKE_NVML_OLD_DRIVER
nvmlReturn_t nvmlDeviceGetPciInfo_v3(void *d, nvmlPciInfo_t *p) { return pci(d, p); }
#endif

/* One number of the profile: NOT_SUPPORTED where the profile has none. */
static nvmlReturn_t number(void *device, size_t offset, long long *value) {
    gpu_t *g;
    nvmlReturn_t code = device_state(device, &g);
    if (code) return code;
    *value = *(long long *)((char *)g + offset);
    return *value == UNSET ? NVML_ERROR_NOT_SUPPORTED : NVML_SUCCESS;
}

#define NUMBER_CALL(fn, field, type)                                   \
    nvmlReturn_t fn(void *d, type *out) {                               \
        long long v;                                                    \
        nvmlReturn_t code = number(d, offsetof(gpu_t, field), &v);      \
        if (code == NVML_SUCCESS) *out = (type)v;                       \
        return code;                                                    \
    }

NUMBER_CALL(nvmlDeviceGetEnforcedPowerLimit, limit_mw, unsigned int)
NUMBER_CALL(nvmlDeviceGetFanSpeed, fan, unsigned int)
NUMBER_CALL(nvmlDeviceGetPerformanceState, pstate, int)
NUMBER_CALL(nvmlDeviceGetCurrentClocksThrottleReasons, reasons, unsigned long long)
#ifndef FAKE_NVML_OLD_DRIVER
NUMBER_CALL(nvmlDeviceGetCurrentClocksEventReasons, reasons, unsigned long long)
NUMBER_CALL(nvmlDeviceGetArchitecture, arch, unsigned int)
#endif

/* The power read also drives the fault knobs: they count reads, as a run counts rounds. */
nvmlReturn_t nvmlDeviceGetPowerUsage(void *device, unsigned int *milliwatts) {
    if (hang_at > 0 && ++power_calls == hang_at) {
        double until = now_s() + (double)env_number("FAKE_NVML_HANG_S", 3600);
        while (now_s() < until) usleep(10000);
    }
    gpu_t *g;
    nvmlReturn_t code = device_state(device, &g);
    if (code) return code;
    g->power_reads++;
    if (unload_from > 0 && g->power_reads >= unload_from && !unloaded) {
        unloaded = 1;
        unload_held = (int)unload_inits;
        unload_from = 0;
        initialised = 0;
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    if ((int)(g - gpus) == lost_gpu && lost_from > 0 && g->power_reads >= lost_from) {
        lost_from = -1; /* from now on every call on it says so */
        return NVML_ERROR_GPU_IS_LOST;
    }
    if (g->power_mw == UNSET) return NVML_ERROR_NOT_SUPPORTED;
    *milliwatts = (unsigned int)g->power_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(void *device, int sensor, unsigned int *celsius) {
    long long v;
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t code = number(device, offsetof(gpu_t, temp), &v);
    if (code == NVML_SUCCESS) *celsius = (unsigned int)v;
    return code;
}

nvmlReturn_t nvmlDeviceGetClockInfo(void *device, int type, unsigned int *mhz) {
    long long v;
    size_t offset = type == 1 ? offsetof(gpu_t, clock_sm) : type == 2 ? offsetof(gpu_t, clock_mem) : 0;
    if (!offset) return NVML_ERROR_NOT_SUPPORTED;
    nvmlReturn_t code = number(device, offset, &v);
    if (code == NVML_SUCCESS) *mhz = (unsigned int)v;
    return code;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(void *device, nvmlUtilization_t *out) {
    long long gpu, memory;
    nvmlReturn_t code = number(device, offsetof(gpu_t, util_gpu), &gpu);
    if (code) return code;
    code = number(device, offsetof(gpu_t, util_mem), &memory);
    if (code) return code;
    out->gpu = (unsigned int)gpu;
    out->memory = (unsigned int)memory;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(void *device, nvmlMemory_t *out) {
    long long total, used;
    nvmlReturn_t code = number(device, offsetof(gpu_t, mem_total), &total);
    if (code) return code;
    code = number(device, offsetof(gpu_t, mem_used), &used);
    if (code) return code;
    out->total = (unsigned long long)total;
    out->used = (unsigned long long)used;
    out->free = out->total - out->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(void *device, unsigned int *current, unsigned int *pending) {
    long long v;
    nvmlReturn_t code = number(device, offsetof(gpu_t, mig), &v);
    if (code == NVML_SUCCESS) *current = *pending = (unsigned int)v;
    return code;
}

#ifndef FAKE_NVML_OLD_DRIVER
static long long energy_reads = 0;

static unsigned long long energy_now(gpu_t *g) {
    double seconds = now_s() - g->energy_base_s;
    return g->energy_base_mj + (unsigned long long)(g->power_mw * seconds);
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(void *device, unsigned long long *millijoules) {
    gpu_t *g;
    nvmlReturn_t code = device_state(device, &g);
    if (code) return code;
    if (g->arch < 5 || g->power_mw == UNSET) return NVML_ERROR_NOT_SUPPORTED;
    if (reset_at > 0 && ++energy_reads == reset_at) {
        for (int i = 0; i < gpu_count; i++) {
            gpus[i].energy_base_mj = 1000;
            gpus[i].energy_base_s = now_s();
        }
    }
    *millijoules = energy_now(g);
    log_line("energy %lld %lld\n", (long long)(g - gpus), (long long)*millijoules);
    return NVML_SUCCESS;
}

/* Field values: 82 memory temperature, 185/186 average/instant power (scope 0 GPU, 1 module). */
nvmlReturn_t nvmlDeviceGetFieldValues(void *device, int n, nvmlFieldValue_t *values) {
    gpu_t *g;
    nvmlReturn_t code = device_state(device, &g);
    if (code) return code;
    for (int i = 0; i < n; i++) {
        nvmlFieldValue_t *f = &values[i];
        long long v = UNSET;
        if (f->fieldId == 82 && f->scopeId == 0) v = g->mem_temp;
        else if (f->fieldId == 185 && f->scopeId == 0) v = g->power_avg_mw;
        else if (f->fieldId == 186 && f->scopeId == 0) v = g->power_inst_mw;
        f->timestamp = (long long)(now_s() * 1e6);
        f->latencyUsec = 0;
        f->valueType = 1; /* NVML_VALUE_TYPE_UNSIGNED_INT */
        f->nvmlReturn = v == UNSET ? NVML_ERROR_NOT_SUPPORTED : NVML_SUCCESS;
        f->value.ull = 0;
        if (v != UNSET) f->value.ui = (unsigned int)v;
    }
    return NVML_SUCCESS;
}
#endif
