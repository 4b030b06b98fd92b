/* nvidia-smi for simulated hosts: the forms gpu-runner and the seed use, answered through NVML calls. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nvml_sim.h"

#define MAX_GPUS 16
#define MAX_APPS 256
#define MIB (1024ULL * 1024)
#define MAX_EXIT 255

/* One GPU, read once through NVML. */
struct info {
    nvmlDevice_t handle;
    unsigned int index, power, instant, limit, enforced, default_limit, min_limit, max_limit;
    unsigned int temperature, fan, util, mem_util, persistence, management, count;
    unsigned long long mem_used, mem_total, mem_free; /* MiB */
    char uuid[96], name[96], bus_id[32], driver[80], cc[16], pstate[8];
};

/* One compute process on one GPU. */
struct app {
    unsigned int pid;
    unsigned long long mem; /* MiB */
    char process_name[256], gpu_uuid[96], gpu_bus_id[32], gpu_name[96];
};

enum kind { STR, UINT, WATTS, MIBS, PERCENT, ENABLED };

struct field {
    const char *name;
    enum kind kind;
    size_t offset;
};

#define INFO(name, kind, member) {name, kind, offsetof(struct info, member)}
static const struct field gpu_fields[] = {
    INFO("index", UINT, index),
    INFO("count", UINT, count),
    INFO("uuid", STR, uuid),
    INFO("gpu_uuid", STR, uuid),
    INFO("name", STR, name),
    INFO("gpu_name", STR, name),
    INFO("pci.bus_id", STR, bus_id),
    INFO("gpu_bus_id", STR, bus_id),
    INFO("driver_version", STR, driver),
    INFO("compute_cap", STR, cc),
    INFO("pstate", STR, pstate),
    INFO("persistence_mode", ENABLED, persistence),
    INFO("power.management", ENABLED, management),
    INFO("power.draw", WATTS, power),
    INFO("power.draw.average", WATTS, power),
    INFO("power.draw.instant", WATTS, instant),
    INFO("power.limit", WATTS, limit),
    INFO("enforced.power.limit", WATTS, enforced),
    INFO("power.default_limit", WATTS, default_limit),
    INFO("power.min_limit", WATTS, min_limit),
    INFO("power.max_limit", WATTS, max_limit),
    INFO("temperature.gpu", UINT, temperature),
    INFO("fan.speed", PERCENT, fan),
    INFO("utilization.gpu", PERCENT, util),
    INFO("utilization.memory", PERCENT, mem_util),
    INFO("memory.used", MIBS, mem_used),
    INFO("memory.total", MIBS, mem_total),
    INFO("memory.free", MIBS, mem_free),
};

#define APP(name, kind, member) {name, kind, offsetof(struct app, member)}
static const struct field app_fields[] = {
    APP("pid", UINT, pid),
    APP("process_name", STR, process_name),
    APP("name", STR, process_name),
    APP("used_memory", MIBS, mem),
    APP("used_gpu_memory", MIBS, mem),
    APP("gpu_uuid", STR, gpu_uuid),
    APP("gpu_bus_id", STR, gpu_bus_id),
    APP("gpu_name", STR, gpu_name),
};

struct options {
    const char *ids, *power_limit, *persistence, *query_gpu, *query_apps, *format, *display, *query, *list, *help;
};

struct option_spec {
    const char *short_name, *long_name;
    size_t offset;
    int takes_value;
};

#define OPT(short_name, long_name, member, takes_value) {short_name, long_name, offsetof(struct options, member), takes_value}
static const struct option_spec option_specs[] = {
    OPT("-i", "--id", ids, 1),
    OPT("-pl", "--power-limit", power_limit, 1),
    OPT("-pm", "--persistence-mode", persistence, 1),
    OPT("-d", "--display", display, 1),
    OPT("-q", "--query", query, 0),
    OPT("-L", "--list-gpus", list, 0),
    OPT("-h", "--help", help, 0),
    OPT(NULL, "--query-gpu", query_gpu, 1),
    OPT(NULL, "--query-compute-apps", query_apps, 1),
    OPT(NULL, "--format", format, 1),
};

static const char *bad_arguments = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n";

/* Accepts "-x VALUE", "--long VALUE" and "--long=VALUE". */
static int parse_options(int argc, char **argv, struct options *o)
{
    for (int i = 1; i < argc; i++) {
        char name[64];
        const char *eq = strncmp(argv[i], "--", 2) ? NULL : strchr(argv[i], '=');
        snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - argv[i]) : (int)strlen(argv[i]), argv[i]);
        const struct option_spec *spec = NULL;
        for (size_t s = 0; s < sizeof option_specs / sizeof *option_specs; s++)
            if ((option_specs[s].short_name && !strcmp(name, option_specs[s].short_name)) ||
                !strcmp(name, option_specs[s].long_name))
                spec = &option_specs[s];
        const char **slot = spec ? (const char **)((char *)o + spec->offset) : NULL;
        if (!spec || (spec->takes_value && !eq && i + 1 >= argc) || (!spec->takes_value && eq)) {
            fputs(bad_arguments, stdout);
            return -1;
        }
        *slot = !spec->takes_value ? "1" : eq ? eq + 1 : argv[++i];
    }
    return 0;
}

static void read_info(nvmlDevice_t d, unsigned int count, struct info *g)
{
    nvmlMemory_t mem = {0};
    nvmlUtilization_t util = {0};
    int major = 0, minor = 0, pstate = 0, persistence = 0;
    memset(g, 0, sizeof *g);
    g->handle = d;
    g->count = count;
    g->management = 1;
    nvmlDeviceGetIndex(d, &g->index);
    nvmlDeviceGetUUID(d, g->uuid, sizeof g->uuid);
    nvmlDeviceGetName(d, g->name, sizeof g->name);
    nvmlPciInfo_t pci = {0};
    nvmlDeviceGetPciInfo_v3(d, &pci);
    snprintf(g->bus_id, sizeof g->bus_id, "%s", pci.busId);
    nvmlSystemGetDriverVersion(g->driver, sizeof g->driver);
    nvmlDeviceGetCudaComputeCapability(d, &major, &minor);
    snprintf(g->cc, sizeof g->cc, "%d.%d", major, minor);
    nvmlDeviceGetPerformanceState(d, &pstate);
    snprintf(g->pstate, sizeof g->pstate, "P%d", pstate);
    nvmlDeviceGetPersistenceMode(d, &persistence);
    g->persistence = (unsigned int)persistence;
    nvmlDeviceGetPowerUsage(d, &g->power);
    nvmlFieldValue_t instant = {.fieldId = NVML_FI_DEV_POWER_INSTANT};
    nvmlDeviceGetFieldValues(d, 1, &instant);
    g->instant = instant.value.uiVal;
    nvmlDeviceGetPowerManagementLimit(d, &g->limit);
    nvmlDeviceGetEnforcedPowerLimit(d, &g->enforced);
    nvmlDeviceGetPowerManagementDefaultLimit(d, &g->default_limit);
    nvmlDeviceGetPowerManagementLimitConstraints(d, &g->min_limit, &g->max_limit);
    nvmlDeviceGetTemperature(d, NVML_TEMPERATURE_GPU, &g->temperature);
    nvmlDeviceGetFanSpeed(d, &g->fan);
    nvmlDeviceGetUtilizationRates(d, &util);
    g->util = util.gpu;
    g->mem_util = util.memory;
    nvmlDeviceGetMemoryInfo(d, &mem);
    g->mem_used = mem.used / MIB;
    g->mem_total = mem.total / MIB;
    g->mem_free = mem.free / MIB;
}

/* Every GPU in -i (indices, UUIDs or bus ids, comma-separated), or all of them. */
static int select_gpus(const char *ids, struct info *gpus, unsigned int *n)
{
    unsigned int count = 0;
    nvmlDeviceGetCount_v2(&count);
    struct info all[MAX_GPUS];
    for (unsigned int i = 0; i < count && i < MAX_GPUS; i++) {
        nvmlDevice_t d;
        nvmlDeviceGetHandleByIndex_v2(i, &d);
        read_info(d, count, &all[i]);
    }
    *n = 0;
    char list[1024];
    snprintf(list, sizeof list, "%s", ids ? ids : "");
    for (char *save = NULL, *id = strtok_r(list, ",", &save); ids && id; id = strtok_r(NULL, ",", &save)) {
        unsigned int found = count;
        for (unsigned int i = 0; i < count && i < MAX_GPUS; i++) {
            char index[16];
            snprintf(index, sizeof index, "%u", i);
            if (!strcmp(id, index) || !strcmp(id, all[i].uuid) || !strcasecmp(id, all[i].bus_id))
                found = i;
        }
        if (found == count || *n >= MAX_GPUS)
            return -1;
        gpus[(*n)++] = all[found];
    }
    for (unsigned int i = 0; !ids && i < count && i < MAX_GPUS; i++)
        gpus[(*n)++] = all[i];
    return *n ? 0 : -1;
}

static void format_value(char *out, size_t size, const void *row, const struct field *f, int units)
{
    const char *p = (const char *)row + f->offset;
    unsigned int u = f->kind == STR || f->kind == MIBS ? 0 : *(const unsigned int *)p;
    switch (f->kind) {
    case STR: snprintf(out, size, "%s", p); break;
    case UINT: snprintf(out, size, "%u", u); break;
    case WATTS: snprintf(out, size, units ? "%.2f W" : "%.2f", u / 1000.0); break;
    case MIBS: snprintf(out, size, units ? "%llu MiB" : "%llu", *(const unsigned long long *)p); break;
    case PERCENT: snprintf(out, size, units ? "%u %%" : "%u", u); break;
    case ENABLED: snprintf(out, size, "%s", u ? "Enabled" : "Disabled"); break;
    }
}

static const char *unit_suffix(enum kind kind)
{
    return kind == WATTS ? " [W]" : kind == MIBS ? " [MiB]" : kind == PERCENT ? " [%]" : "";
}

/* Prints rows as nvidia-smi's CSV: ", " between values, units unless "nounits". */
static int print_csv(const struct field *table, size_t table_len, const char *fields, const char *format,
                     const void *rows, size_t stride, unsigned int n)
{
    const struct field *chosen[64];
    size_t count = 0;
    char list[1024];
    if (!format || strncmp(format, "csv", 3)) {
        printf("\"--format\" must be csv, e.g. --format=csv,noheader,nounits\n");
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    snprintf(list, sizeof list, "%s", fields);
    for (char *save = NULL, *name = strtok_r(list, ", ", &save); name; name = strtok_r(NULL, ", ", &save)) {
        const struct field *f = NULL;
        for (size_t i = 0; i < table_len; i++)
            if (!strcmp(name, table[i].name))
                f = &table[i];
        if (!f || count >= 64) {
            printf("Field \"%s\" is not a valid field to query.\n\n", name);
            return NVML_ERROR_INVALID_ARGUMENT;
        }
        chosen[count++] = f;
    }
    for (size_t i = 0; !strstr(format, "noheader") && i < count; i++)
        printf("%s%s%s", i ? ", " : "", chosen[i]->name, unit_suffix(chosen[i]->kind));
    if (!strstr(format, "noheader"))
        printf("\n");
    for (unsigned int r = 0; r < n; r++) {
        for (size_t i = 0; i < count; i++) {
            char value[256];
            format_value(value, sizeof value, (const char *)rows + r * stride, chosen[i], !strstr(format, "nounits"));
            printf("%s%s", i ? ", " : "", value);
        }
        printf("\n");
    }
    return 0;
}

static unsigned int read_apps(const struct info *gpus, unsigned int n, struct app *apps)
{
    unsigned int count = 0;
    for (unsigned int i = 0; i < n; i++) {
        nvmlProcessInfo_t procs[MAX_APPS];
        unsigned int np = MAX_APPS;
        if (nvmlDeviceGetComputeRunningProcesses_v3(gpus[i].handle, &np, procs))
            continue;
        for (unsigned int p = 0; p < np && count < MAX_APPS; p++) {
            struct app *a = &apps[count++];
            memset(a, 0, sizeof *a);
            a->pid = procs[p].pid;
            a->mem = procs[p].usedGpuMemory / MIB;
            nvmlSystemGetProcessName(a->pid, a->process_name, sizeof a->process_name);
            snprintf(a->gpu_uuid, sizeof a->gpu_uuid, "%s", gpus[i].uuid);
            snprintf(a->gpu_bus_id, sizeof a->gpu_bus_id, "%s", gpus[i].bus_id);
            snprintf(a->gpu_name, sizeof a->gpu_name, "%s", gpus[i].name);
        }
    }
    return count;
}

static const char *persistence_warning =
    "\nWarning: persistence mode is disabled on device %s. See the Known Issues section of the nvidia-smi(1) man "
    "page for more information. Run with [--help | -h] switch to get more information on how to enable "
    "persistence mode.\n";

/* Reports a failed setting like nvidia-smi: the reason, then stop; the exit code is the NVML error. */
static int fail(const char *what, const struct info *g, nvmlReturn_t ret)
{
    printf("Failed to set %s for GPU %s: %s\nTerminating early due to previous errors.\n", what, g->bus_id,
           nvmlErrorString(ret));
    return ret > MAX_EXIT ? MAX_EXIT : ret;
}

static int set_power_limit(const char *arg, const struct info *gpus, unsigned int n)
{
    char *end;
    double w = strtod(arg, &end);
    if (*end || w <= 0) {
        printf("Invalid power limit \"%s\".\n", arg);
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    for (unsigned int i = 0; i < n; i++) {
        const struct info *g = &gpus[i];
        nvmlReturn_t ret = nvmlDeviceSetPowerManagementLimit(g->handle, (unsigned int)(w * 1000 + 0.5));
        if (ret == NVML_ERROR_INVALID_ARGUMENT) {
            printf("Provided power limit %.2f W is not a valid power limit which should be between %.2f W and "
                   "%.2f W for GPU %s\nTerminating early due to previous errors.\n",
                   w, g->min_limit / 1000.0, g->max_limit / 1000.0, g->bus_id);
            return ret;
        }
        if (ret == NVML_ERROR_NOT_SUPPORTED)
            printf("Changing power management limit is not supported for GPU: %s.\n", g->bus_id);
        if (ret)
            return fail("power management limit", g, ret);
        printf("Power limit for GPU %s was set to %.2f W from %.2f W.\n", g->bus_id, w, g->limit / 1000.0);
        if (!g->persistence)
            printf(persistence_warning, g->bus_id);
    }
    printf("All done.\n");
    return 0;
}

static int set_persistence(const char *arg, const struct info *gpus, unsigned int n)
{
    if (strcmp(arg, "0") && strcmp(arg, "1")) {
        fputs(bad_arguments, stdout);
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    for (unsigned int i = 0; i < n; i++) {
        nvmlReturn_t ret = nvmlDeviceSetPersistenceMode(gpus[i].handle, atoi(arg));
        if (ret)
            return fail("persistence mode", &gpus[i], ret);
        printf("%s persistence mode for GPU %s.\n", atoi(arg) ? "Enabled" : "Disabled", gpus[i].bus_id);
    }
    printf("All done.\n");
    return 0;
}

static void print_now(const char *format)
{
    char stamp[64];
    time_t now = time(NULL);
    strftime(stamp, sizeof stamp, "%a %b %e %H:%M:%S %Y", localtime(&now));
    printf(format, stamp);
}

/* The -q report: sections named for -d, headings (no field), and items formatted like CSV values. */
static const struct report_line {
    const char *section, *label, *field, *suffix;
} report[] = {
    {"", "Product Name", "name", ""},
    {"", "Persistence Mode", "persistence_mode", ""},
    {"", "GPU UUID", "uuid", ""},
    {"MEMORY", "FB Memory Usage", NULL, ""},
    {"MEMORY", "Total", "memory.total", ""},
    {"MEMORY", "Used", "memory.used", ""},
    {"MEMORY", "Free", "memory.free", ""},
    {"UTILIZATION", "Utilization", NULL, ""},
    {"UTILIZATION", "Gpu", "utilization.gpu", ""},
    {"UTILIZATION", "Memory", "utilization.memory", ""},
    {"TEMPERATURE", "Temperature", NULL, ""},
    {"TEMPERATURE", "GPU Current Temp", "temperature.gpu", " C"},
    {"POWER", "GPU Power Readings", NULL, ""},
    {"POWER", "Power Draw", "power.draw", ""},
    {"POWER", "Instant Power Draw", "power.draw.instant", ""},
    {"POWER", "Current Power Limit", "power.limit", ""},
    {"POWER", "Requested Power Limit", "power.limit", ""},
    {"POWER", "Default Power Limit", "power.default_limit", ""},
    {"POWER", "Min Power Limit", "power.min_limit", ""},
    {"POWER", "Max Power Limit", "power.max_limit", ""},
};

static const struct field *gpu_field(const char *name)
{
    for (size_t i = 0; i < sizeof gpu_fields / sizeof *gpu_fields; i++)
        if (!strcmp(name, gpu_fields[i].name))
            return &gpu_fields[i];
    return NULL;
}

static void print_item(int indent, const char *label, const char *value)
{
    printf("%*s%-*s: %s\n", indent, "", 42 - indent, label, value);
}

/* Without -d: every section; with it (e.g. POWER,TEMPERATURE): the named ones only. */
static int print_query(const char *display, const struct info *gpus, unsigned int n)
{
    char value[256];
    int cuda = 0;
    nvmlSystemGetCudaDriverVersion(&cuda);
    printf("\n==============NVSMI LOG==============\n\n");
    print_now("Timestamp                                 : %s\n");
    print_item(0, "Driver Version", gpus[0].driver);
    snprintf(value, sizeof value, "%d.%d", cuda / 1000, cuda % 1000 / 10);
    print_item(0, "CUDA Version", value);
    snprintf(value, sizeof value, "%u", gpus[0].count);
    printf("\n");
    print_item(0, "Attached GPUs", value);
    for (unsigned int i = 0; i < n; i++) {
        printf("GPU %s\n", gpus[i].bus_id);
        for (size_t r = 0; r < sizeof report / sizeof *report; r++) {
            const struct report_line *line = &report[r];
            if (display && (!*line->section || !strstr(display, line->section)))
                continue;
            if (!line->field) {
                printf("    %s\n", line->label);
                continue;
            }
            format_value(value, sizeof value - 8, &gpus[i], gpu_field(line->field), 1);
            strcat(value, line->suffix);
            print_item(*line->section ? 8 : 4, line->label, value);
        }
        printf("\n");
    }
    return 0;
}

static const char *rule = "+-----------------------------------------+------------------------+----------------------+\n";
static const char *wide_rule = "+-----------------------------------------------------------------------------------------+\n";

/* The summary table that plain `nvidia-smi` prints. */
static int print_table(const struct info *gpus, unsigned int n)
{
    int cuda = 0;
    char driver[80] = "";
    struct app apps[MAX_APPS];
    nvmlSystemGetCudaDriverVersion(&cuda);
    nvmlSystemGetDriverVersion(driver, sizeof driver);
    print_now("%s\n");
    fputs(wide_rule, stdout);
    printf("| NVIDIA-SMI %-22s Driver Version: %-14s CUDA Version: %2d.%-6d|\n", driver, driver, cuda / 1000,
           cuda % 1000 / 10);
    printf("|-----------------------------------------+------------------------+----------------------+\n");
    printf("| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |\n");
    printf("| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |\n");
    printf("|=========================================+========================+======================|\n");
    for (unsigned int i = 0; i < n; i++) {
        const struct info *g = &gpus[i];
        printf("| %3u  %-30.30s %3s | %18s Off | %20s |\n", g->index, g->name, g->persistence ? "On" : "Off",
               g->bus_id, "N/A");
        printf("|%3u%%  %3uC    %-2s %14uW / %4uW |%8lluMiB / %6lluMiB | %6u%%      Default |\n", g->fan,
               g->temperature, g->pstate, g->power / 1000, g->limit / 1000, g->mem_used, g->mem_total, g->util);
        fputs(rule, stdout);
    }
    printf("\n");
    fputs(wide_rule, stdout);
    printf("| Processes:                                                                              |\n");
    printf("|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |\n");
    printf("|        ID   ID                                                               Usage      |\n");
    printf("|=========================================================================================|\n");
    unsigned int count = read_apps(gpus, n, apps);
    for (unsigned int i = 0; i < count; i++) {
        unsigned int index = 0;
        for (unsigned int g = 0; g < n; g++)
            if (!strcmp(gpus[g].uuid, apps[i].gpu_uuid))
                index = gpus[g].index;
        printf("|  %3u   N/A  N/A  %9u      C   %-39.39s %8lluMiB |\n", index, apps[i].pid, apps[i].process_name,
               apps[i].mem);
    }
    if (!count)
        printf("|  No running processes found                                                             |\n");
    fputs(wide_rule, stdout);
    return 0;
}

static int list_gpus(const struct info *gpus, unsigned int n)
{
    for (unsigned int i = 0; i < n; i++)
        printf("GPU %u: %s (UUID: %s)\n", gpus[i].index, gpus[i].name, gpus[i].uuid);
    return 0;
}

static int run(const struct options *o, const struct info *gpus, unsigned int n)
{
    struct app apps[MAX_APPS];
    if (o->list)
        return list_gpus(gpus, n);
    if (o->power_limit)
        return set_power_limit(o->power_limit, gpus, n);
    if (o->persistence)
        return set_persistence(o->persistence, gpus, n);
    if (o->query_gpu)
        return print_csv(gpu_fields, sizeof gpu_fields / sizeof *gpu_fields, o->query_gpu, o->format, gpus,
                         sizeof *gpus, n);
    if (o->query_apps)
        return print_csv(app_fields, sizeof app_fields / sizeof *app_fields, o->query_apps, o->format, apps,
                         sizeof *apps, read_apps(gpus, n, apps));
    if (o->query)
        return print_query(o->display, gpus, n);
    return print_table(gpus, n);
}

int main(int argc, char **argv)
{
    struct options o = {0};
    struct info gpus[MAX_GPUS];
    unsigned int n;
    if (parse_options(argc, argv, &o))
        return NVML_ERROR_INVALID_ARGUMENT;
    if (o.help) {
        printf("NVIDIA System Management Interface (simulated by gpu-runner's tests/gpu_sim).\n"
               "Supported: -L, -q [-d POWER,...], --query-gpu=... / --query-compute-apps=... --format=csv[,noheader]"
               "[,nounits], [-i ID] -pl WATTS, [-i ID] -pm 0|1\n");
        return 0;
    }
    if (nvmlInit_v2()) {
        printf("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
               "latest NVIDIA driver is installed and running.\n\n");
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    int rc;
    if (select_gpus(o.ids, gpus, &n)) {
        printf("No devices were found\n");
        rc = NVML_ERROR_NOT_FOUND;
    } else {
        rc = run(&o, gpus, n);
    }
    nvmlShutdown();
    return rc;
}
