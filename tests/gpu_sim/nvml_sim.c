/* A stand-in for libnvidia-ml.so.1: GPUs described by a JSON state file (README.md), live load from /proc. */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "json.h"
#include "nvml_sim.h"

#define MAX_GPUS 16
#define MAX_PROCS 32
#define MIB (1024ULL * 1024)
#define IDLE_MEMORY_MIB 1 /* a headless idle card reports about 1 MiB used */
#define BUSY_UTILIZATION 95
#define HEAT_C 40.0 /* degrees above idle at the maximum power limit */

_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t layout");
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t layout");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t layout");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t layout");

struct nvmlDevice_st {
    unsigned int index;
};

static struct nvmlDevice_st devices[MAX_GPUS];
static unsigned int device_count;
static int init_count;

struct proc {
    unsigned int pid;
    unsigned long long mem;
};

/* One GPU as NVML reports it at this moment. */
struct gpu {
    char uuid[96], name[96], bus_id[32];
    int cc_major, cc_minor;
    unsigned long long mem_total, mem_used;
    unsigned int min_mw, max_mw, default_mw, limit_mw, idle_mw, power_mw, instant_mw;
    unsigned int temperature_c, utilization, persistence;
    unsigned int nproc;
    struct proc procs[MAX_PROCS];
};

static const char *state_path(void)
{
    const char *path = getenv("GPU_SIM_STATE");
    return path && *path ? path : "/var/lib/gpu-sim/state.json";
}

static char *read_text(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    while (text) {
        len += fread(text + len, 1, cap - len - 1, f);
        if (len < cap - 1 || cap >= max)
            break;
        char *grown = realloc(text, cap * 2);
        if (!grown)
            free(text);
        text = grown;
        cap *= 2;
    }
    fclose(f);
    if (text)
        text[len] = '\0';
    return text;
}

static void read_boot_id(char *out, size_t size)
{
    const char *path = getenv("GPU_SIM_BOOT_ID_FILE"); /* tests fake a reboot through this */
    char *text = read_text(path && *path ? path : "/proc/sys/kernel/random/boot_id", 4096);
    snprintf(out, size, "%s", text ? text : "");
    out[strcspn(out, "\n")] = '\0';
    free(text);
}

/* The driver forgets limits and persistence on reboot: restore defaults when the boot id changed. */
static int reset_if_rebooted(struct json *root)
{
    char boot[64];
    read_boot_id(boot, sizeof boot);
    const char *seen = json_str(root, "limits_boot_id", NULL);
    if (!seen || !strcmp(seen, boot))
        return 0;
    struct json *gpus = json_get(root, "gpus");
    for (int i = 0; i < json_len(gpus); i++) {
        struct json *g = json_at(gpus, i);
        json_set_num(g, "power_limit_w", json_num(g, "power_default_w", 0));
        json_set_num(g, "persistence_mode", 0);
    }
    json_set_str(root, "limits_boot_id", boot);
    return 1;
}

static struct json *load_state(int *rebooted)
{
    char *text = read_text(state_path(), 1 << 24);
    struct json *root = text ? json_parse(text) : NULL;
    free(text);
    if (!json_get(root, "gpus")) {
        json_free(root);
        return NULL;
    }
    *rebooted = reset_if_rebooted(root);
    return root;
}

/* Temp file and rename, so readers see the old or the new state, never half of one. */
static int save_state(const struct json *root)
{
    char tmp[PATH_MAX];
    struct stat st;
    char *text = json_write(root);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", state_path(), (int)getpid());
    FILE *f = text ? fopen(tmp, "w") : NULL;
    mode_t mode = stat(state_path(), &st) ? 0644 : st.st_mode & 07777; /* unprivileged readers keep access */
    int ok = f && fchmod(fileno(f), mode) == 0 && fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = f && fclose(f) == 0 && ok && rename(tmp, state_path()) == 0;
    if (!ok)
        unlink(tmp);
    free(text);
    return ok ? 0 : -1;
}

typedef nvmlReturn_t (*edit_fn)(struct json *root, struct json *gpu, unsigned int value);

/* Load, edit and save under a lock, so concurrent setters never lose each other's updates. */
static nvmlReturn_t update_state(unsigned int index, edit_fn edit, unsigned int value)
{
    char lock_path[PATH_MAX];
    snprintf(lock_path, sizeof lock_path, "%s.lock", state_path());
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock < 0 || flock(lock, LOCK_EX)) {
        if (lock >= 0)
            close(lock);
        return NVML_ERROR_NO_PERMISSION;
    }
    int rebooted;
    struct json *root = load_state(&rebooted);
    nvmlReturn_t ret = root ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
    if (root && edit) {
        struct json *gpu = json_at(json_get(root, "gpus"), (int)index);
        ret = gpu ? edit(root, gpu, value) : NVML_ERROR_GPU_IS_LOST;
    }
    if (ret == NVML_SUCCESS && (edit || rebooted) && save_state(root))
        ret = NVML_ERROR_UNKNOWN;
    json_free(root);
    close(lock); /* releases the flock */
    return ret;
}

/* Remember which boot set a value, so a reboot can forget it. */
static void stamp_boot(struct json *root)
{
    char boot[64];
    read_boot_id(boot, sizeof boot);
    json_set_str(root, "limits_boot_id", boot);
}

static nvmlReturn_t edit_limit(struct json *root, struct json *gpu, unsigned int mw)
{
    double w = mw / 1000.0; /* NVML speaks mW; the state file speaks W */
    if (w < json_num(gpu, "power_min_w", 0) || w > json_num(gpu, "power_max_w", 0))
        return NVML_ERROR_INVALID_ARGUMENT;
    json_set_num(gpu, "power_limit_w", w);
    stamp_boot(root);
    return NVML_SUCCESS;
}

static nvmlReturn_t edit_persistence(struct json *root, struct json *gpu, unsigned int mode)
{
    if (mode > 1)
        return NVML_ERROR_INVALID_ARGUMENT;
    json_set_num(gpu, "persistence_mode", mode);
    stamp_boot(root);
    return NVML_SUCCESS;
}

static unsigned int to_mw(double w) { return w > 0 ? (unsigned int)llround(w * 1000) : 0; }

static void copy_str(char *out, size_t size, const char *s) { snprintf(out, size, "%s", s ? s : ""); }

static void read_static(struct gpu *g, const struct json *node)
{
    memset(g, 0, sizeof *g);
    copy_str(g->uuid, sizeof g->uuid, json_str(node, "uuid", NULL));
    copy_str(g->name, sizeof g->name, json_str(node, "name", NULL));
    copy_str(g->bus_id, sizeof g->bus_id, json_str(node, "pci_bus_id", NULL));
    struct json *cc = json_get(node, "compute_capability");
    g->cc_major = json_at(cc, 0) ? (int)json_at(cc, 0)->num : 0;
    g->cc_minor = json_at(cc, 1) ? (int)json_at(cc, 1)->num : 0;
    g->mem_total = (unsigned long long)json_num(node, "memory_total_mib", 0) * MIB;
    g->min_mw = to_mw(json_num(node, "power_min_w", 0));
    g->max_mw = to_mw(json_num(node, "power_max_w", 0));
    double default_w = json_num(node, "power_default_w", 0);
    g->default_mw = to_mw(default_w);
    g->limit_mw = to_mw(json_num(node, "power_limit_w", default_w));
    g->idle_mw = to_mw(json_num(node, "idle_power_w", 20));
    g->temperature_c = (unsigned int)json_num(node, "temperature_c", 35);
    g->persistence = json_num(node, "persistence_mode", 0) != 0;
}

/* "gpus" is "all" or a list of UUIDs (or indices). */
static int runs_on(const struct json *gpus, const struct gpu *g, int index)
{
    if (gpus && gpus->type == JSON_STR)
        return !strcmp(gpus->str, "all");
    for (int i = 0; i < json_len(gpus); i++) {
        struct json *item = json_at(gpus, i);
        if ((item->type == JSON_STR && !strcmp(item->str, g->uuid)) ||
            (item->type == JSON_NUM && (int)item->num == index))
            return 1;
    }
    return 0;
}

/* The command line with its NUL separators turned into spaces; "" for kernel threads and the gone. */
static char *read_cmdline(unsigned int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/cmdline", pid);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *text = malloc(8192);
    size_t len = text ? fread(text, 1, 8191, f) : 0;
    fclose(f);
    if (!text)
        return NULL;
    for (size_t i = 0; i < len; i++)
        text[i] = text[i] ? text[i] : ' ';
    text[len] = '\0';
    return text;
}

/* A live process whose command line contains a state pattern is a compute process on its GPUs. */
static void add_processes(struct gpu *gpus, unsigned int count, const struct json *patterns)
{
    DIR *dir = json_len(patterns) ? opendir("/proc") : NULL;
    struct dirent *entry;
    while (dir && (entry = readdir(dir))) {
        if (!isdigit((unsigned char)entry->d_name[0]))
            continue;
        unsigned int pid = (unsigned int)strtoul(entry->d_name, NULL, 10);
        char *cmdline = read_cmdline(pid);
        for (int p = 0; cmdline && *cmdline && p < json_len(patterns); p++) {
            struct json *pattern = json_at(patterns, p);
            const char *needle = json_str(pattern, "pattern", "");
            if (!*needle || !strstr(cmdline, needle))
                continue;
            for (unsigned int i = 0; i < count; i++) {
                struct gpu *g = &gpus[i];
                if (g->nproc < MAX_PROCS && runs_on(json_get(pattern, "gpus"), g, (int)i))
                    g->procs[g->nproc++] = (struct proc){pid, (unsigned long long)(json_num(pattern, "memory_mib", 0) * MIB)};
            }
            break; /* one process, one entry per GPU */
        }
        free(cmdline);
    }
    if (dir)
        closedir(dir);
}

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec / 1e6;
}

/* Deterministic noise in [0, 1) for a time slot and a GPU (splitmix64). */
static double noise(unsigned long long slot, unsigned int gpu)
{
    unsigned long long x = slot * 0x9E3779B97F4A7C15ULL + (gpu + 1) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return (double)((x ^ (x >> 31)) >> 11) / 9007199254740992.0;
}

/* Busy GPUs draw about 0.9x their limit; the 1 s average stays under it, instants may not. */
static void apply_load(struct gpu *g, unsigned int index, const struct json *force)
{
    double t = now_s();
    int busy = g->nproc > 0;
    g->mem_used = IDLE_MEMORY_MIB * MIB;
    for (unsigned int i = 0; i < g->nproc; i++)
        g->mem_used += g->procs[i].mem;
    if (g->mem_used > g->mem_total)
        g->mem_used = g->mem_total;
    g->utilization = busy ? BUSY_UTILIZATION : 0;
    double avg = busy ? g->limit_mw * (0.88 + 0.04 * noise((unsigned long long)t, index))
                      : g->idle_mw * (0.96 + 0.08 * noise((unsigned long long)t, index));
    avg = fmin(json_num(force, "power_w", -1) >= 0 ? json_num(force, "power_w", 0) * 1000 : avg, g->limit_mw);
    double instant = avg * (0.90 + 0.25 * noise((unsigned long long)(t * 10), index + MAX_GPUS));
    g->power_mw = (unsigned int)avg;
    g->instant_mw = json_num(force, "instant_power_w", -1) >= 0 ? to_mw(json_num(force, "instant_power_w", 0))
                                                                : (unsigned int)instant;
    double span = g->max_mw > g->idle_mw ? (double)(g->max_mw - g->idle_mw) : 1;
    g->temperature_c += (unsigned int)fmax(0, HEAT_C * (avg - g->idle_mw) / span);
    if (json_num(force, "temperature_c", -1) >= 0)
        g->temperature_c = (unsigned int)json_num(force, "temperature_c", 0);
}

/* A fresh snapshot of every GPU: the state file as it is now, plus the processes alive now. */
static nvmlReturn_t read_gpus(struct gpu *out, unsigned int *count)
{
    int rebooted;
    struct json *root = load_state(&rebooted);
    if (!root)
        return NVML_ERROR_UNKNOWN;
    if (rebooted)
        update_state(0, NULL, 0); /* best effort: a non-root reader cannot persist the reset */
    struct json *gpus = json_get(root, "gpus");
    *count = (unsigned int)json_len(gpus) < MAX_GPUS ? (unsigned int)json_len(gpus) : MAX_GPUS;
    for (unsigned int i = 0; i < *count; i++)
        read_static(&out[i], json_at(gpus, (int)i));
    add_processes(out, *count, json_get(root, "processes"));
    for (unsigned int i = 0; i < *count; i++)
        apply_load(&out[i], i, json_get(json_at(gpus, (int)i), "force"));
    json_free(root);
    return NVML_SUCCESS;
}

static int valid_handle(nvmlDevice_t d) { return d >= devices && d < devices + device_count; }

static nvmlReturn_t read_gpu(nvmlDevice_t d, struct gpu *g)
{
    struct gpu all[MAX_GPUS];
    unsigned int count;
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    if (!valid_handle(d))
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = read_gpus(all, &count);
    if (ret == NVML_SUCCESS && d->index >= count)
        ret = NVML_ERROR_GPU_IS_LOST;
    if (ret == NVML_SUCCESS)
        *g = all[d->index];
    return ret;
}

/* Integrates power over time in this process; starts as if idle since boot. */
static unsigned long long energy_mj(const struct gpu *g, unsigned int index)
{
    static unsigned long long total[MAX_GPUS];
    static double last[MAX_GPUS];
    double t = now_s();
    if (!last[index]) {
        char *uptime = read_text("/proc/uptime", 4096);
        total[index] = (unsigned long long)((uptime ? atof(uptime) : 0) * g->idle_mw);
        free(uptime);
    } else {
        total[index] += (unsigned long long)((t - last[index]) * g->power_mw);
    }
    last[index] = t;
    return total[index];
}

/* ---- Exported NVML entry points ---- */

NVML_API nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    int rebooted;
    struct json *root = load_state(&rebooted);
    if (!root) {
        fprintf(stderr, "gpu-sim: no readable state at %s (set GPU_SIM_STATE)\n", state_path());
        return NVML_ERROR_DRIVER_NOT_LOADED; /* as if no driver */
    }
    int n = json_len(json_get(root, "gpus"));
    json_free(root);
    device_count = n < MAX_GPUS ? (unsigned int)n : MAX_GPUS;
    for (unsigned int i = 0; i < device_count; i++)
        devices[i].index = i;
    init_count++;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
NVML_API nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

NVML_API nvmlReturn_t nvmlShutdown(void)
{
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    init_count--;
    return NVML_SUCCESS;
}

NVML_API const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

/* Copies a string into a caller's buffer the way NVML does: too small is an error. */
static nvmlReturn_t put_str(char *out, unsigned int length, const char *s)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, s);
    return NVML_SUCCESS;
}

static nvmlReturn_t read_top(char *driver, size_t size, int *cuda)
{
    int rebooted;
    struct json *root = init_count ? load_state(&rebooted) : NULL;
    if (!root)
        return init_count ? NVML_ERROR_UNKNOWN : NVML_ERROR_UNINITIALIZED;
    copy_str(driver, size, json_str(root, "driver_version", "550.120"));
    *cuda = (int)json_num(root, "cuda_driver_version", 12040);
    json_free(root);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    char driver[80];
    int cuda;
    nvmlReturn_t ret = read_top(driver, sizeof driver, &cuda);
    return ret ? ret : put_str(version, length, driver);
}

NVML_API nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    char driver[80], nvml[96];
    int cuda;
    nvmlReturn_t ret = read_top(driver, sizeof driver, &cuda);
    snprintf(nvml, sizeof nvml, "%d.%s", cuda / 1000, driver); /* e.g. 12.550.120 */
    return ret ? ret : put_str(version, length, nvml);
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
    char driver[80];
    return version ? read_top(driver, sizeof driver, version) : NVML_ERROR_INVALID_ARGUMENT;
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) { return nvmlSystemGetCudaDriverVersion(version); }

NVML_API nvmlReturn_t nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int length)
{
    char *cmdline = read_cmdline(pid);
    if (!cmdline)
        return NVML_ERROR_NOT_FOUND;
    cmdline[strcspn(cmdline, " ")] = '\0'; /* argv[0] */
    nvmlReturn_t ret = put_str(name, length, cmdline);
    free(cmdline);
    return ret;
}

NVML_API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = device_count;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

/* Finds the GPU whose UUID (or PCI bus id, compared numerically) matches. */
static nvmlReturn_t find_handle(const char *key, int by_bus, nvmlDevice_t *device)
{
    struct gpu all[MAX_GPUS];
    unsigned int count, want[4] = {0}, have[4] = {0};
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    if (!key || !device || (by_bus && sscanf(key, "%x:%x:%x.%x", &want[0], &want[1], &want[2], &want[3]) != 4))
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t ret = read_gpus(all, &count);
    for (unsigned int i = 0; ret == NVML_SUCCESS && i < count && i < device_count; i++) {
        int match = by_bus ? sscanf(all[i].bus_id, "%x:%x:%x.%x", &have[0], &have[1], &have[2], &have[3]) == 4 &&
                                 !memcmp(want, have, sizeof want)
                           : !strcmp(all[i].uuid, key);
        if (match) {
            *device = &devices[i];
            return NVML_SUCCESS;
        }
    }
    return ret ? ret : NVML_ERROR_NOT_FOUND;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    return find_handle(uuid, 0, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, nvmlDevice_t *device)
{
    return find_handle(bus_id, 1, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *bus_id, nvmlDevice_t *device)
{
    return find_handle(bus_id, 1, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length)
{
    struct gpu g;
    nvmlReturn_t ret = read_gpu(d, &g);
    return ret ? ret : put_str(name, length, g.name);
}

NVML_API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length)
{
    struct gpu g;
    nvmlReturn_t ret = read_gpu(d, &g);
    return ret ? ret : put_str(uuid, length, g.uuid);
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci)
{
    struct gpu g;
    nvmlReturn_t ret = pci ? read_gpu(d, &g) : NVML_ERROR_INVALID_ARGUMENT;
    if (ret)
        return ret;
    memset(pci, 0, sizeof *pci);
    sscanf(g.bus_id, "%x:%x:%x", &pci->domain, &pci->bus, &pci->device);
    pci->pciDeviceId = 0x10DE; /* NVIDIA's vendor id in the low half */
    snprintf(pci->busId, sizeof pci->busId, "%s", g.bus_id);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04x:%02x:%02x.0", pci->domain & 0xFFFF, pci->bus,
             pci->device);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(d, pci); }

NVML_API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor)
{
    struct gpu g;
    nvmlReturn_t ret = major && minor ? read_gpu(d, &g) : NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        *major = g.cc_major;
        *minor = g.cc_minor;
    }
    return ret;
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *memory)
{
    struct gpu g;
    nvmlReturn_t ret = memory ? read_gpu(d, &g) : NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS)
        *memory = (nvmlMemory_t){g.mem_total, g.mem_total - g.mem_used, g.mem_used};
    return ret;
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *memory)
{
    nvmlMemory_t v1;
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    nvmlReturn_t ret = nvmlDeviceGetMemoryInfo(d, &v1);
    if (ret == NVML_SUCCESS)
        *memory = (nvmlMemory_v2_t){nvmlMemory_v2, v1.total, 0, v1.free, v1.used};
    return ret;
}

/* One getter per scalar: read a snapshot, hand back one value of it. */
#define SCALAR_GETTER(fn, type, expr)                                                                  \
    NVML_API nvmlReturn_t fn(nvmlDevice_t d, type *out)                                                \
    {                                                                                                  \
        struct gpu g;                                                                                  \
        nvmlReturn_t ret = out ? read_gpu(d, &g) : NVML_ERROR_INVALID_ARGUMENT;                        \
        if (ret == NVML_SUCCESS)                                                                       \
            *out = (expr);                                                                             \
        return ret;                                                                                    \
    }

SCALAR_GETTER(nvmlDeviceGetIndex, unsigned int, d->index)
SCALAR_GETTER(nvmlDeviceGetMinorNumber, unsigned int, d->index)
SCALAR_GETTER(nvmlDeviceGetPowerUsage, unsigned int, g.power_mw)
SCALAR_GETTER(nvmlDeviceGetPowerManagementLimit, unsigned int, g.limit_mw)
SCALAR_GETTER(nvmlDeviceGetEnforcedPowerLimit, unsigned int, g.limit_mw)
SCALAR_GETTER(nvmlDeviceGetPowerManagementDefaultLimit, unsigned int, g.default_mw)
SCALAR_GETTER(nvmlDeviceGetPowerManagementMode, int, 1) /* NVML_FEATURE_ENABLED */
SCALAR_GETTER(nvmlDeviceGetTotalEnergyConsumption, unsigned long long, energy_mj(&g, d->index))
SCALAR_GETTER(nvmlDeviceGetPersistenceMode, int, (int)g.persistence)
SCALAR_GETTER(nvmlDeviceGetPerformanceState, int, g.nproc ? 2 : 8) /* P2 under load, P8 idle */
SCALAR_GETTER(nvmlDeviceGetPowerState, int, g.nproc ? 2 : 8)
SCALAR_GETTER(nvmlDeviceGetFanSpeed, unsigned int, 30 + g.utilization / 3)
SCALAR_GETTER(nvmlDeviceGetBrand, int, NVML_BRAND_GEFORCE)
SCALAR_GETTER(nvmlDeviceGetUtilizationRates, nvmlUtilization_t, ((nvmlUtilization_t){g.utilization, g.utilization / 2}))
SCALAR_GETTER(nvmlDeviceGetCurrentClocksThrottleReasons, unsigned long long, 0)
SCALAR_GETTER(nvmlDeviceGetCurrentClocksEventReasons, unsigned long long, 0)
SCALAR_GETTER(nvmlDeviceGetSupportedClocksThrottleReasons, unsigned long long, 0)
SCALAR_GETTER(nvmlDeviceGetSupportedClocksEventReasons, unsigned long long, 0)

/* NVML's architecture numbers, from the compute capability. */
static unsigned int architecture(const struct gpu *g)
{
    int cc = g->cc_major * 10 + g->cc_minor;
    return cc >= 100 ? 10 : cc >= 90 ? 9 : cc == 89 ? 8 : cc >= 80 ? 7 : cc >= 75 ? 6 : cc >= 70 ? 5 : cc >= 60 ? 4 : 0xffffffff;
}

SCALAR_GETTER(nvmlDeviceGetArchitecture, unsigned int, architecture(&g))

NVML_API nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t d, unsigned int *min_mw,
                                                                   unsigned int *max_mw)
{
    struct gpu g;
    nvmlReturn_t ret = min_mw && max_mw ? read_gpu(d, &g) : NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        *min_mw = g.min_mw;
        *max_mw = g.max_mw;
    }
    return ret;
}

NVML_API nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *celsius)
{
    struct gpu g;
    nvmlReturn_t ret = celsius ? read_gpu(d, &g) : NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && sensor != NVML_TEMPERATURE_GPU)
        ret = NVML_ERROR_NOT_SUPPORTED; /* consumer cards expose only the GPU sensor */
    if (ret == NVML_SUCCESS)
        *celsius = g.temperature_c;
    return ret;
}

NVML_API nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t d, nvmlTemperature_t *temperature)
{
    unsigned int celsius;
    if (!temperature)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (temperature->version != nvmlTemperature_v1)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    nvmlReturn_t ret = nvmlDeviceGetTemperature(d, temperature->sensorType, &celsius);
    if (ret == NVML_SUCCESS)
        temperature->temperature = (int)celsius;
    return ret;
}

NVML_API nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t d, int count, nvmlFieldValue_t *values)
{
    struct gpu g;
    nvmlReturn_t ret = values && count >= 0 ? read_gpu(d, &g) : NVML_ERROR_INVALID_ARGUMENT;
    long long now_us = (long long)(now_s() * 1e6);
    for (int i = 0; ret == NVML_SUCCESS && i < count; i++) {
        nvmlFieldValue_t *v = &values[i];
        unsigned int mw[] = {[NVML_FI_DEV_POWER_AVERAGE - 185] = g.power_mw,
                             [NVML_FI_DEV_POWER_INSTANT - 185] = g.instant_mw,
                             [NVML_FI_DEV_POWER_MIN_LIMIT - 185] = g.min_mw,
                             [NVML_FI_DEV_POWER_MAX_LIMIT - 185] = g.max_mw,
                             [NVML_FI_DEV_POWER_DEFAULT_LIMIT - 185] = g.default_mw,
                             [NVML_FI_DEV_POWER_CURRENT_LIMIT - 185] = g.limit_mw};
        v->timestamp = now_us;
        v->latencyUsec = 0;
        v->nvmlReturn = NVML_SUCCESS;
        v->value.ullVal = 0;
        if (v->fieldId >= NVML_FI_DEV_POWER_AVERAGE && v->fieldId <= NVML_FI_DEV_POWER_CURRENT_LIMIT) {
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            v->value.uiVal = mw[v->fieldId - 185];
        } else if (v->fieldId == NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION) {
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
            v->value.ullVal = energy_mj(&g, d->index);
        } else {
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED; /* per field: the call itself succeeds */
        }
    }
    return ret;
}

/* Fills v1 (16-byte) or v2/v3 (24-byte) records; v1 is a prefix of the newer layout. */
static nvmlReturn_t get_processes(nvmlDevice_t d, unsigned int *count, void *infos, size_t record, int compute)
{
    struct gpu g;
    nvmlReturn_t ret = count ? read_gpu(d, &g) : NVML_ERROR_INVALID_ARGUMENT;
    if (ret)
        return ret;
    unsigned int n = compute ? g.nproc : 0; /* no displays on these hosts */
    if (n > *count || (n && !infos)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < n; i++) {
        nvmlProcessInfo_t info = {g.procs[i].pid, g.procs[i].mem, 0xFFFFFFFF, 0xFFFFFFFF}; /* no MIG */
        memcpy((char *)infos + i * record, &info, record);
    }
    *count = n;
    return NVML_SUCCESS;
}

#define PROCESS_GETTER(fn, record, compute)                                                            \
    NVML_API nvmlReturn_t fn(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos)            \
    {                                                                                                  \
        return get_processes(d, count, infos, record, compute);                                        \
    }

PROCESS_GETTER(nvmlDeviceGetComputeRunningProcesses, 16, 1)
PROCESS_GETTER(nvmlDeviceGetComputeRunningProcesses_v2, 24, 1)
PROCESS_GETTER(nvmlDeviceGetComputeRunningProcesses_v3, 24, 1)
PROCESS_GETTER(nvmlDeviceGetGraphicsRunningProcesses, 16, 0)
PROCESS_GETTER(nvmlDeviceGetGraphicsRunningProcesses_v2, 24, 0)
PROCESS_GETTER(nvmlDeviceGetGraphicsRunningProcesses_v3, 24, 0)
PROCESS_GETTER(nvmlDeviceGetMPSComputeRunningProcesses_v3, 24, 0)

/* Setting needs root, like the driver; the value lands in the state file for every reader. */
static nvmlReturn_t set_value(nvmlDevice_t d, edit_fn edit, unsigned int value)
{
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    if (!valid_handle(d))
        return NVML_ERROR_INVALID_ARGUMENT;
    if (geteuid() != 0)
        return NVML_ERROR_NO_PERMISSION;
    return update_state(d->index, edit, value);
}

NVML_API nvmlReturn_t nvmlDeviceSetPowerManagementLimit(nvmlDevice_t d, unsigned int mw)
{
    return set_value(d, edit_limit, mw);
}

NVML_API nvmlReturn_t nvmlDeviceSetPowerManagementLimit_v2(nvmlDevice_t d, nvmlPowerValue_v2_t *power)
{
    if (!power)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (power->version != nvmlPowerValue_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (power->powerScope != NVML_POWER_SCOPE_GPU)
        return NVML_ERROR_NOT_SUPPORTED; /* consumer boards have no module or memory scope */
    return set_value(d, edit_limit, power->powerValueMw);
}

NVML_API nvmlReturn_t nvmlDeviceSetPersistenceMode(nvmlDevice_t d, int mode)
{
    return set_value(d, edit_persistence, (unsigned int)mode);
}
