/* hvprof: a QEMU TCG plugin (QEMU 7.2's plugin API, version 1) that counts
 * the instructions executed in each translation block starting inside
 * [lo, hi) -- Ferrite's text, 0x200000..__text_end by default -- and the
 * machine's total, and writes them at exit as "total N" then "VADDR COUNT"
 * lines. Under -icount that is the benchmarks' own metric, so the profile
 * says where the instructions a benchmark counts go (`report.py` names the
 * functions). The declarations below are the few of qemu-plugin.h it uses,
 * written out because Debian ships no plugin header.
 *
 * Build: gcc -shared -fPIC -O2 -o hvprof.so tools/profile/hvprof.c
 * Use:   FERRITE_QEMU_EXTRA="-plugin $PWD/hvprof.so,out=/tmp/hv.prof" \
 *          cargo run --release -p ferrite-tools -- bench net --no-hvm --no-uplink
 *        python3 tools/profile/report.py /tmp/hv.prof target/baremetal/release/ferrite-hv 40
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef uint64_t qemu_plugin_id_t;
typedef struct { const char *target_name; struct { int min; int cur; } version; int system_emulation; union { struct { int smp_vcpus; int max_vcpus; } system; }; } qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*udata_cb_t)(qemu_plugin_id_t, void *);
extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr, uint64_t imm);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb_t cb, void *userdata);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
struct ent { uint64_t vaddr; uint64_t count; };
#define MAXE (1<<20)
static struct ent *ents; static size_t nents; static uint64_t lo = 0x200000, hi = 0x30f000;
static const char *outpath = "/tmp/hvprof.out";
static uint64_t total;
static void trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    uint64_t va = qemu_plugin_tb_vaddr(tb);
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &total, n);
    if (va < lo || va >= hi || nents >= MAXE) return;
    struct ent *e = &ents[nents++];
    e->vaddr = va;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &e->count, n);
}
static void atexit_cb(qemu_plugin_id_t id, void *u) {
    FILE *f = fopen(outpath, "w");
    if (!f) return;
    fprintf(f, "total %llu\n", (unsigned long long)total);
    for (size_t i = 0; i < nents; i++) if (ents[i].count) fprintf(f, "%llx %llu\n", (unsigned long long)ents[i].vaddr, (unsigned long long)ents[i].count);
    fclose(f);
}
__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (!strncmp(argv[i], "out=", 4)) outpath = argv[i] + 4;
        if (!strncmp(argv[i], "lo=", 3)) lo = strtoull(argv[i] + 3, 0, 16);
        if (!strncmp(argv[i], "hi=", 3)) hi = strtoull(argv[i] + 3, 0, 16);
    }
    ents = calloc(MAXE, sizeof *ents);
    qemu_plugin_register_vcpu_tb_trans_cb(id, trans);
    qemu_plugin_register_atexit_cb(id, atexit_cb, 0);
    return 0;
}
