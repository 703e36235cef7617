/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The software CPU's hottest exits in C: unicorn's instruction hooks for CPUID, RDTSC,
 * RDTSCP, IN and OUT (backends/emu/hooks.py is the reference; this is the same logic).
 *
 * Each hook carries out what needs no decision of Python's natively -- RDTSC(P) from
 * virtual time, the check whether an IN/OUT exits -- and calls into Python only for what
 * Python owns: the processor's exit routine (``decide``), the devices, and every rare case,
 * which goes to the Python hook itself, unchanged.  The per-exit state lives here: what
 * the last report showed of the guest's non-general state (``seen``), so an exit where
 * nothing but general registers moved is recognised with one memcmp, and RFLAGS as then.
 *
 * The fused path: while the handler runs the seed's own CPUID handling (the processor
 * hands a ``fusion`` with the seed's answer as a pure function), a CPUID exit is carried
 * out here without Python and without the GIL: the answer comes from a small cache filled
 * by that function, and what the exits leave behind (counts, StateSave, the VMCS exit
 * information, the reason trace) is handed to the processor in one call (``absorb``)
 * before Python next runs on this vCPU.  The cache is emptied whenever Python has run on
 * the vCPU's thread, and the path is taken only right after the processor resumed the
 * guest with nothing changed (its reused resume plan).
 */
#include "accel.h"

/* QEMU's CPUX86State, as backends/emu/register_file.py describes it. */
enum {
    RIP_AT = 128,
    FLAGS_AT = 136,
    CC_AT = 144,
    CC_OP_AT = 168,
    SYSTEM_AT = 176,
    HEAD_SIZE = 464,
    SEEN_SIZE = HEAD_SIZE - FLAGS_AT,
    GPRS = 16,
};
enum { QEMU_RAX = 0, QEMU_RCX = 1, QEMU_RDX = 2, QEMU_RBX = 3, QEMU_RSP = 4 };
enum { UC_PROT_EXEC = 4, SKIP = 1, CPUID_LENGTH = 2, CACHE_SLOTS = 64, CPUID_REASON = 10 };
enum { IDLE_BLOCKS = 1024 }; /* blocks of guest code without Python before the GIL goes */

typedef int (*uc_emu_start_fn)(void *, uint64_t, uint64_t, uint64_t, size_t);
typedef int (*uc_emu_stop_fn)(void *);
typedef int (*uc_vmem_read_fn)(void *, uint64_t, int, void *, size_t);
typedef int (*uc_reg_read_fn)(void *, int, void *);
typedef int (*uc_reg_write_fn)(void *, int, const void *);
typedef int (*uc_mem_read_fn)(void *, uint64_t, void *, size_t);
typedef int (*uc_mem_write_fn)(void *, uint64_t, const void *, size_t);

typedef struct { /* uc_x86_msr */
    uint32_t rid;
    uint64_t value;
} UcMsr;

/* The stop gate's state (stop_gate.GateState). */
typedef struct {
    uint64_t executed, budget_end;
    uint8_t stop;
} GateState;

typedef struct {
    uint32_t leaf, subleaf;
    uint64_t era; /* valid while it is the object's ``era`` */
    uint64_t regs[4]; /* EAX EBX ECX EDX as the handler answers them */
} CpuidSlot;

/* Exits the counters tell apart (``counts``), for tests and benchmarks to see the path. */
enum { N_FUSED, N_NATIVE, N_PYTHON, N_TSC, N_IO, N_KINDS };
static const char *const COUNT_NAMES[N_KINDS] = {"fused", "native", "python", "tsc", "io"};

typedef struct {
    PyObject_HEAD
    /* the engine */
    void *uc;
    unsigned char *env;
    volatile uint64_t *dr7;
    volatile uint64_t *executed; /* the stop gate's count of guest code run */
    volatile GateState *gate;
    unsigned char *ram;
    uint64_t ram_size;
    uint32_t cc_op_clr;
    uc_emu_start_fn emu_start;
    uc_emu_stop_fn emu_stop;
    uc_vmem_read_fn vmem_read;
    uc_reg_read_fn reg_read;
    uc_reg_write_fn reg_write;
    uc_mem_read_fn mem_read;
    uc_mem_write_fn mem_write;
    int rflags_id, msr_id;
    GilHolder gil;
    /* Python: the reference hooks, and what the fast paths call */
    PyObject *on_cpuid, *on_rdtsc, *on_rdtscp, *on_in, *on_out;
    PyObject *fail, *leave_helper, *io_read, *io_write, *noted, *capture;
    PyObject *cpuid_info, *empty;
    PyObject *decide; /* the processor's exit routine, for this run */
    /* the exit controls (``set_policy``) and guest time (``set_timing``) */
    int policy_known, rdtsc_exits, rdtscp_enabled, io_unconditional, io_bitmaps;
    uint64_t io_bitmap[2], tsc_offset;
    int timed;
    uint64_t idle_ns, units_per_ns, tsc_hz;
    int tsc_aux_known;
    uint64_t tsc_aux;
    int draining;
    /* what the last report showed */
    int seen_valid;
    unsigned char seen[SEEN_SIZE];
    uint64_t seen_dr7, rflags;
    /* the fused path */
    PyObject *resume, *answer, *absorb, *trace;
    int fuse_ok;
    CpuidSlot cache[CACHE_SLOTS];
    uint64_t era; /* of the cache: starts at 1, so a zeroed slot is never valid */
    uint64_t fused, fused_rip, fused_rflags, fused_regs[GPRS];
    uint64_t *rips;
    size_t rips_len, rips_cap;
    uint64_t counts[N_KINDS];
} EmuExits;

static inline uint64_t load64(const unsigned char *at)
{
    uint64_t v;
    memcpy(&v, at, 8);
    return v;
}

static inline uint32_t load32(const unsigned char *at)
{
    uint32_t v;
    memcpy(&v, at, 4);
    return v;
}

/* -- the state the last report showed ------------------------------------------------ */

/* Whether no guest-state field moved since the last report -- what StateCapture.capture
 * would find -- with ``rflags`` brought up to date where only RFLAGS' inputs moved (read
 * as StateCapture.moved reads it, through unicorn).  With no condition code live
 * (CC_OP_CLR) the stale values QEMU leaves in cc_dst..cc_src2 do not count, as there. */
static int unmoved(EmuExits *self)
{
    if (!self->seen_valid || *self->dr7 != self->seen_dr7)
        return 0;
    if (PyDict_GET_SIZE(self->noted) != 0)
        return 0; /* the engine changed fields itself: the capture reports them */
    const unsigned char *env = self->env;
    unsigned char *seen = self->seen;
    if (memcmp(env + SYSTEM_AT, seen + (SYSTEM_AT - FLAGS_AT), HEAD_SIZE - SYSTEM_AT) != 0)
        return 0;
    if (memcmp(env + FLAGS_AT, seen, CC_AT - FLAGS_AT) == 0 &&
        memcmp(env + CC_OP_AT, seen + (CC_OP_AT - FLAGS_AT), SYSTEM_AT - CC_OP_AT) == 0 &&
        (load32(env + CC_OP_AT) == self->cc_op_clr ||
         memcmp(env + CC_AT, seen + (CC_AT - FLAGS_AT), CC_OP_AT - CC_AT) == 0))
        return 1;
    uint64_t rflags;
    if (self->reg_read(self->uc, self->rflags_id, &rflags) != 0)
        return 0;
    self->rflags = rflags;
    memcpy(seen, env + FLAGS_AT, SYSTEM_AT - FLAGS_AT);
    return 1;
}

/* After the Python hook captured: what it reported is the state now.  (GIL held.) */
static void refresh_seen(EmuExits *self)
{
    uint64_t rflags;
    if (attr_u64(self->capture, "rflags", &rflags) < 0) {
        PyErr_Clear();
        self->seen_valid = 0;
        return;
    }
    memcpy(self->seen, self->env + FLAGS_AT, SEEN_SIZE);
    self->seen_dr7 = *self->dr7;
    self->rflags = rflags;
    self->seen_valid = 1;
}

/* -- the fused path's bookkeeping -------------------------------------------------- */

/* Hand the fused exits since the last call to the processor.  (GIL held.) */
static int flush(EmuExits *self)
{
    if (self->fused == 0)
        return 0;
    PyObject *regs = PyTuple_New(GPRS), *rips = NULL, *result = NULL;
    if (regs == NULL)
        return -1;
    for (int i = 0; i < GPRS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(self->fused_regs[i]);
        if (v == NULL)
            goto done;
        PyTuple_SET_ITEM(regs, i, v);
    }
    if (self->trace != Py_None) {
        rips = PyList_New((Py_ssize_t)self->rips_len);
        if (rips == NULL)
            goto done;
        for (size_t i = 0; i < self->rips_len; i++) {
            PyObject *v = PyLong_FromUnsignedLongLong(self->rips[i]);
            if (v == NULL)
                goto done;
            PyList_SET_ITEM(rips, (Py_ssize_t)i, v);
        }
    } else {
        rips = Py_NewRef(Py_None);
    }
    result = PyObject_CallFunction(self->absorb, "KOKKOO", (unsigned long long)self->fused,
                                   self->cpuid_info, (unsigned long long)self->fused_rip,
                                   (unsigned long long)self->fused_rflags, regs, rips);
done:
    self->fused = 0;
    self->rips_len = 0;
    Py_XDECREF(regs);
    Py_XDECREF(rips);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* Python is about to run on this vCPU: the fused exits go to the processor first, and
 * nothing learned about the handler's answers survives. */
static int before_python(EmuExits *self)
{
    self->fuse_ok = 0;
    self->era++; /* every cached answer is forgotten */
    return flush(self);
}

/* An exception while the guest runs must not unwind into unicorn: the Python side turns
 * it into a stop, as its own hooks do.  (GIL held, exception set.) */
static void report_failure(EmuExits *self)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value == NULL) {
        value = Py_NewRef(Py_None);
    } else if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    PyObject *result = PyObject_CallOneArg(self->fail, value);
    if (result == NULL)
        PyErr_WriteUnraisable(self->fail);
    Py_XDECREF(result);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* -- CPUID ------------------------------------------------------------------------ */

static CpuidSlot *cpuid_slot(EmuExits *self, uint32_t leaf, uint32_t subleaf)
{
    return &self->cache[(leaf * 0x9E3779B1u ^ subleaf * 0x85EBCA77u) >> 26];
}

/* The seed's answer to (leaf, subleaf), filled in from its pure function on a miss.
 * 0: answered; -1: not here (the reference path must run). */
static int fused_answer(EmuExits *self, uint32_t leaf, uint32_t subleaf, uint64_t out[4])
{
    CpuidSlot *slot = cpuid_slot(self, leaf, subleaf);
    if (slot->era != self->era || slot->leaf != leaf || slot->subleaf != subleaf) {
        GilTicket ticket;
        gil_take(&self->gil, &ticket);
        int ok = 0;
        PyObject *regs = PyObject_CallFunction(self->answer, "II", leaf, subleaf);
        if (regs != NULL && PyTuple_Check(regs) && PyTuple_GET_SIZE(regs) == 4) {
            uint64_t values[4];
            ok = 1;
            for (int i = 0; i < 4 && ok; i++)
                ok = as_u64(PyTuple_GET_ITEM(regs, i), &values[i]) == 0;
            if (ok) {
                slot->leaf = leaf;
                slot->subleaf = subleaf;
                slot->era = self->era;
                memcpy(slot->regs, values, sizeof values);
            }
        }
        Py_XDECREF(regs);
        PyErr_Clear(); /* the reference path meets the same problem and reports it */
        gil_give(&self->gil, &ticket);
        if (!ok)
            return -1;
    }
    memcpy(out, slot->regs, sizeof slot->regs);
    return 0;
}

static int fused_cpuid(EmuExits *self, uint64_t rip)
{
    uint64_t *regs = (uint64_t *)self->env, answer[4];
    if (fused_answer(self, (uint32_t)regs[QEMU_RAX], (uint32_t)regs[QEMU_RCX], answer) < 0)
        return -1;
    if (self->trace != Py_None) {
        if (self->rips_len == self->rips_cap) {
            size_t cap = self->rips_cap ? 2 * self->rips_cap : 256;
            uint64_t *grown = realloc(self->rips, cap * sizeof *grown);
            if (grown == NULL)
                return -1;
            self->rips = grown;
            self->rips_cap = cap;
        }
        self->rips[self->rips_len++] = rip;
    }
    regs[QEMU_RAX] = answer[0];
    regs[QEMU_RBX] = answer[1];
    regs[QEMU_RCX] = answer[2];
    regs[QEMU_RDX] = answer[3];
    self->fused++;
    self->fused_rip = rip;
    self->fused_rflags = self->rflags;
    memcpy(self->fused_regs, regs, sizeof self->fused_regs);
    self->counts[N_FUSED]++;
    return 0;
}

/* The exit through the processor, as hooks._on_cpuid makes it when nothing moved: the
 * record, the decision, and the registers written in place or the drain.  (GIL held.) */
static void cpuid_exit(EmuExits *self, uint64_t rip)
{
    unsigned char *env = self->env;
    uint64_t *regs = (uint64_t *)env;
    PyObject *values = PyTuple_New(GPRS + 2), *record = NULL, *plan = NULL;
    if (values == NULL)
        goto failed;
    for (int i = 0; i < GPRS + 2; i++) {
        uint64_t v = i < GPRS ? regs[i] : load64(env + RIP_AT + 8 * (i - GPRS));
        PyObject *item = PyLong_FromUnsignedLongLong(v);
        if (item == NULL)
            goto failed;
        PyTuple_SET_ITEM(values, i, item);
    }
    record = Py_BuildValue("(OOKKOOK)", self->cpuid_info, values, (unsigned long long)rip,
                           (unsigned long long)self->rflags, Py_None, self->empty,
                           (unsigned long long)*self->executed);
    if (record == NULL)
        goto failed;
    plan = PyObject_CallOneArg(self->decide, record);
    if (plan == NULL)
        goto failed;
    self->counts[N_NATIVE]++;
    int simple = attr_true(plan, "simple");
    if (simple < 0)
        goto failed;
    if (simple) {
        uint64_t plan_rip, written[GPRS];
        if (attr_u64(plan, "rip", &plan_rip) < 0)
            goto failed;
        PyObject *plan_regs = PyObject_GetAttrString(plan, "regs");
        if (plan_regs == NULL)
            goto failed;
        PyObject *seq = PySequence_Fast(plan_regs, "plan registers");
        Py_DECREF(plan_regs);
        if (seq == NULL)
            goto failed;
        int ok = PySequence_Fast_GET_SIZE(seq) == GPRS;
        for (int i = 0; i < GPRS && ok; i++)
            ok = as_u64(PySequence_Fast_GET_ITEM(seq, i), &written[i]) == 0;
        Py_DECREF(seq);
        if (!ok) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "an entry plan needs 16 registers");
            goto failed;
        }
        if (plan_rip == rip + CPUID_LENGTH && written[QEMU_RSP] == regs[QEMU_RSP]) {
            memcpy(regs, written, sizeof written);
            self->fuse_ok = plan == self->resume;
            goto done;
        }
    }
    PyObject *left = PyObject_CallOneArg(self->leave_helper, plan);
    if (left == NULL)
        goto failed;
    Py_DECREF(left);
    goto done;
failed:
    report_failure(self);
done:
    Py_XDECREF(values);
    Py_XDECREF(record);
    Py_XDECREF(plan);
}

/* The Python hook, the reference, for everything this file does not do itself; ``args``
 * are the hook's arguments after the engine's, as Py_BuildValue makes them.  (GIL held.) */
static uint32_t call_reference(EmuExits *self, PyObject *hook, int captures, const char *format,
                               ...)
{
    uint32_t answer = SKIP;
    if (before_python(self) < 0) {
        report_failure(self);
        return answer;
    }
    self->counts[N_PYTHON]++;
    va_list values;
    va_start(values, format);
    PyObject *args = Py_VaBuildValue(format, values);
    va_end(values);
    PyObject *result = args == NULL ? NULL : PyObject_Call(hook, args, NULL);
    Py_XDECREF(args);
    if (result == NULL) {
        report_failure(self);
    } else {
        unsigned long v = result == Py_None ? 0 : PyLong_AsUnsignedLong(result);
        if (PyErr_Occurred())
            report_failure(self);
        else
            answer = (uint32_t)v;
        Py_DECREF(result);
    }
    if (captures)
        refresh_seen(self);
    return answer;
}

static uint32_t on_cpuid(void *uc, void *data)
{
    EmuExits *self = data;
    if (self->draining)
        return SKIP;
    uint64_t rip = load64(self->env + RIP_AT);
    unsigned char code[CPUID_LENGTH];
    int plain = (rip & 0xFFF) != 0xFFF && self->vmem_read(uc, rip, UC_PROT_EXEC, code, 2) == 0 &&
                code[0] == 0x0F && code[1] == 0xA2;
    int same = plain && unmoved(self);
    if (same && self->fuse_ok && self->answer != NULL && fused_cpuid(self, rip) == 0)
        return SKIP;
    GilTicket ticket;
    gil_take(&self->gil, &ticket);
    uint32_t answer = SKIP;
    if (same && self->decide != NULL) {
        if (before_python(self) < 0)
            report_failure(self);
        else
            cpuid_exit(self, rip);
    } else {
        answer = call_reference(self, self->on_cpuid, 1, "(ii)", 0, 0);
    }
    gil_give(&self->gil, &ticket);
    return answer;
}

/* -- RDTSC, RDTSCP ------------------------------------------------------------------ */

/* RDTSC (RDTSCP) carried out from virtual time, as hooks._virtual_tsc does. */
static void virtual_tsc(EmuExits *self, int rdtscp)
{
    uint64_t *regs = (uint64_t *)self->env;
    uint64_t now = *self->executed / self->units_per_ns + self->idle_ns;
    uint64_t value = (uint64_t)((unsigned __int128)now * self->tsc_hz / 1000000000u);
    value += self->tsc_offset;
    regs[QEMU_RAX] = value & 0xFFFFFFFFu;
    regs[QEMU_RDX] = value >> 32;
    if (rdtscp)
        regs[QEMU_RCX] = self->tsc_aux & 0xFFFFFFFFu;
    self->counts[N_TSC]++;
}

/* The reference hook of an instruction hook: (uc, user data). */
static uint32_t reference(EmuExits *self, PyObject *hook)
{
    GilTicket ticket;
    gil_take(&self->gil, &ticket);
    uint32_t answer = call_reference(self, hook, 0, "(ii)", 0, 0);
    gil_give(&self->gil, &ticket);
    return answer;
}

static uint32_t on_rdtsc(void *uc, void *data)
{
    EmuExits *self = data;
    if (self->draining)
        return SKIP;
    if (self->policy_known && !self->rdtsc_exits && self->timed) {
        virtual_tsc(self, 0);
        return SKIP;
    }
    return reference(self, self->on_rdtsc);
}

static uint32_t on_rdtscp(void *uc, void *data)
{
    EmuExits *self = data;
    if (self->draining)
        return SKIP;
    if (self->policy_known && self->rdtscp_enabled && !self->rdtsc_exits) {
        if (!self->timed)
            return 0; /* runs natively */
        if (self->tsc_aux_known) {
            virtual_tsc(self, 1);
            return SKIP;
        }
    }
    return reference(self, self->on_rdtscp);
}

/* -- IN, OUT ------------------------------------------------------------------------ */

/* Whether the access exits (SDM 25.1.3): 1, 0, or -1 where the Python hook must tell
 * (a bitmap outside guest RAM, which it reports as the error it is). */
static int io_exits(EmuExits *self, uint32_t port, int size)
{
    if (self->io_unconditional)
        return 1;
    if (!self->io_bitmaps)
        return 0;
    for (uint32_t p = port; p < port + (uint32_t)size; p++) {
        if (p > 0xFFFF)
            return 1; /* an access that wraps around exits */
        uint64_t at = self->io_bitmap[p >> 15] + ((p & 0x7FFF) >> 3);
        if (at >= self->ram_size)
            return -1;
        if (self->ram[at] >> (p & 7) & 1)
            return 1;
    }
    return 0;
}

static uint32_t on_in(void *uc, uint32_t port, int size, void *data)
{
    EmuExits *self = data;
    if (self->draining)
        return 0;
    uint64_t mask = size >= 4 ? 0xFFFFFFFFu : ((uint64_t)1 << (8 * size)) - 1, value = 0;
    GilTicket ticket;
    gil_take(&self->gil, &ticket);
    if (!self->policy_known || io_exits(self, port, size) != 0) {
        value = call_reference(self, self->on_in, 0, "(iIii)", 0, port, size, 0);
    } else if (before_python(self) < 0) {
        report_failure(self);
    } else {
        self->counts[N_IO]++;
        PyObject *result = PyObject_CallFunction(self->io_read, "Ii", port, size);
        PyObject *masked = NULL;
        if (result != NULL) {
            PyObject *m = PyLong_FromUnsignedLongLong(mask);
            masked = m == NULL ? NULL : PyNumber_And(result, m);
            Py_XDECREF(m);
        }
        if (masked == NULL || as_u64(masked, &value) < 0)
            report_failure(self);
        Py_XDECREF(result);
        Py_XDECREF(masked);
    }
    gil_give(&self->gil, &ticket);
    return (uint32_t)value;
}

static void on_out(void *uc, uint32_t port, int size, uint32_t value, void *data)
{
    EmuExits *self = data;
    if (self->draining)
        return;
    GilTicket ticket;
    gil_take(&self->gil, &ticket);
    if (!self->policy_known || io_exits(self, port, size) != 0) {
        call_reference(self, self->on_out, 0, "(iIiIi)", 0, port, size, value, 0);
    } else if (before_python(self) < 0) {
        report_failure(self);
    } else {
        self->counts[N_IO]++;
        PyObject *result = PyObject_CallFunction(self->io_write, "IiI", port, size, value);
        if (result == NULL)
            report_failure(self);
        Py_XDECREF(result);
    }
    gil_give(&self->gil, &ticket);
}

/* -- the stop gate's block hook (backends/emu/stop_gate.py) --------------------------- */

/* At each block start: stop where the gate says (its budget spent, another thread
 * asked), else count the block; and let the GIL go once the guest ran long enough
 * without Python. */
static void on_block(void *uc, uint64_t address, uint32_t size, void *data)
{
    EmuExits *self = data;
    volatile GateState *gate = self->gate;
    if (gate->executed >= gate->budget_end || gate->stop) {
        self->emu_stop(uc);
        return;
    }
    gate->executed += size;
    gil_idle(&self->gil);
}

/* -- the Python face ----------------------------------------------------------------- */

static void emu_clear_refs(EmuExits *self)
{
    Py_CLEAR(self->on_cpuid);
    Py_CLEAR(self->on_rdtsc);
    Py_CLEAR(self->on_rdtscp);
    Py_CLEAR(self->on_in);
    Py_CLEAR(self->on_out);
    Py_CLEAR(self->fail);
    Py_CLEAR(self->leave_helper);
    Py_CLEAR(self->io_read);
    Py_CLEAR(self->io_write);
    Py_CLEAR(self->noted);
    Py_CLEAR(self->capture);
    Py_CLEAR(self->cpuid_info);
    Py_CLEAR(self->empty);
    Py_CLEAR(self->decide);
    Py_CLEAR(self->resume);
    Py_CLEAR(self->answer);
    Py_CLEAR(self->absorb);
    Py_CLEAR(self->trace);
}

static void emu_dealloc(EmuExits *self)
{
    emu_clear_refs(self);
    free(self->rips);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int emu_init(EmuExits *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"hooks",  "capture", "ports", "engine",
                            "layout", "time",    "cpuid_info", NULL};
    PyObject *hooks, *capture, *ports, *engine, *layout, *timing, *info;
    unsigned long long uc, env, dr7, executed, ram, ram_size, start, stop, vmem_read, reg_read;
    unsigned long long reg_write, mem_read, mem_write;
    unsigned int cc_op_clr;
    int rflags_id, msr_id;
    unsigned long long units_per_ns, tsc_hz;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOO", names, &hooks, &capture, &ports,
                                     &engine, &layout, &timing, &info))
        return -1;
    /* engine: (uc, uc_emu_start, uc_emu_stop, uc_vmem_read, uc_reg_read, uc_reg_write,
     *          uc_mem_read, uc_mem_write, guest RAM, its size)
     * layout: (CPUX86State, DR7's address, CC_OP_CLR, the stop gate's GateState, RFLAGS'
     *          id, the MSR pseudo-register's id)
     * time: (units per ns, TSC Hz) */
    if (!PyArg_ParseTuple(engine, "KKKKKKKKKK", &uc, &start, &stop, &vmem_read, &reg_read,
                          &reg_write, &mem_read, &mem_write, &ram, &ram_size) ||
        !PyArg_ParseTuple(layout, "KKIKii", &env, &dr7, &cc_op_clr, &executed, &rflags_id,
                          &msr_id) ||
        !PyArg_ParseTuple(timing, "KK", &units_per_ns, &tsc_hz))
        return -1;
    if (units_per_ns == 0) {
        PyErr_SetString(PyExc_ValueError, "units per ns must be positive");
        return -1;
    }
    emu_clear_refs(self);
    self->uc = (void *)(uintptr_t)uc;
    self->env = (unsigned char *)(uintptr_t)env;
    self->dr7 = (volatile uint64_t *)(uintptr_t)dr7;
    self->executed = (volatile uint64_t *)(uintptr_t)executed;
    self->gate = (volatile GateState *)(uintptr_t)executed;
    self->gil.patience = IDLE_BLOCKS;
    self->era = 1;
    self->ram = (unsigned char *)(uintptr_t)ram;
    self->ram_size = ram_size;
    self->cc_op_clr = cc_op_clr;
    self->emu_start = (uc_emu_start_fn)(uintptr_t)start;
    self->emu_stop = (uc_emu_stop_fn)(uintptr_t)stop;
    self->vmem_read = (uc_vmem_read_fn)(uintptr_t)vmem_read;
    self->reg_read = (uc_reg_read_fn)(uintptr_t)reg_read;
    self->reg_write = (uc_reg_write_fn)(uintptr_t)reg_write;
    self->mem_read = (uc_mem_read_fn)(uintptr_t)mem_read;
    self->mem_write = (uc_mem_write_fn)(uintptr_t)mem_write;
    self->rflags_id = rflags_id;
    self->msr_id = msr_id;
    self->units_per_ns = units_per_ns;
    self->tsc_hz = tsc_hz;
    struct {
        PyObject **slot;
        PyObject *owner;
        const char *name;
    } wanted[] = {
        {&self->on_cpuid, hooks, "_on_cpuid"},   {&self->on_rdtsc, hooks, "_on_rdtsc"},
        {&self->on_rdtscp, hooks, "_on_rdtscp"}, {&self->on_in, hooks, "_on_in"},
        {&self->on_out, hooks, "_on_out"},       {&self->fail, hooks, "_fail"},
        {&self->leave_helper, hooks, "_leave_helper"},
        {&self->io_read, ports, "io_read"},      {&self->io_write, ports, "io_write"},
        {&self->noted, capture, "noted"},
    };
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
        *wanted[i].slot = PyObject_GetAttrString(wanted[i].owner, wanted[i].name);
        if (*wanted[i].slot == NULL)
            return -1;
    }
    if (!PyDict_Check(self->noted)) {
        PyErr_SetString(PyExc_TypeError, "capture.noted must be a dict");
        return -1;
    }
    self->capture = Py_NewRef(capture);
    self->cpuid_info = Py_NewRef(info);
    self->empty = PyUnicode_FromString("");
    self->trace = Py_NewRef(Py_None);
    return self->empty == NULL ? -1 : 0;
}

static PyObject *emu_start_method(EmuExits *self, PyObject *arg)
{
    uint64_t rip;
    if (as_u64(arg, &rip) < 0)
        return NULL;
    self->fuse_ok = 0;
    self->era++; /* every cached answer is forgotten */
    gil_keep(&self->gil);
    int status = self->emu_start(self->uc, rip, 0, 0, 0);
    gil_return(&self->gil);
    if (flush(self) < 0)
        return NULL;
    return PyLong_FromLong(status);
}

static PyObject *emu_set_policy(EmuExits *self, PyObject *policy)
{
    int rdtsc = attr_true(policy, "rdtsc"), rdtscp = attr_true(policy, "rdtscp_enabled");
    int unconditional = attr_true(policy, "io_unconditional");
    if (rdtsc < 0 || rdtscp < 0 || unconditional < 0)
        return NULL;
    PyObject *offset = PyObject_GetAttrString(policy, "tsc_offset");
    if (offset == NULL)
        return NULL;
    uint64_t tsc_offset = PyLong_AsUnsignedLongLongMask(offset);
    Py_DECREF(offset);
    if (PyErr_Occurred())
        return NULL;
    PyObject *bitmaps = PyObject_GetAttrString(policy, "io_bitmaps");
    if (bitmaps == NULL)
        return NULL;
    uint64_t a = 0, b = 0;
    int has_bitmaps = bitmaps != Py_None;
    int ok = !has_bitmaps || PyArg_ParseTuple(bitmaps, "KK", &a, &b);
    Py_DECREF(bitmaps);
    if (!ok)
        return NULL;
    self->rdtsc_exits = rdtsc;
    self->rdtscp_enabled = rdtscp;
    self->io_unconditional = unconditional;
    self->io_bitmaps = has_bitmaps;
    self->io_bitmap[0] = a;
    self->io_bitmap[1] = b;
    self->tsc_offset = tsc_offset;
    self->policy_known = 1;
    Py_RETURN_NONE;
}

static PyObject *emu_set_timing(EmuExits *self, PyObject *args)
{
    int timed;
    unsigned long long idle_ns;
    if (!PyArg_ParseTuple(args, "pK", &timed, &idle_ns))
        return NULL;
    self->timed = timed;
    self->idle_ns = idle_ns;
    Py_RETURN_NONE;
}

static PyObject *emu_fuse(EmuExits *self, PyObject *args)
{
    PyObject *resume, *answer, *absorb, *trace;
    if (!PyArg_ParseTuple(args, "OOOO", &resume, &answer, &absorb, &trace))
        return NULL;
    if (flush(self) < 0)
        return NULL;
    Py_XSETREF(self->resume, Py_NewRef(resume));
    Py_XSETREF(self->answer, answer == Py_None ? NULL : Py_NewRef(answer));
    Py_XSETREF(self->absorb, Py_NewRef(absorb));
    Py_XSETREF(self->trace, Py_NewRef(trace));
    self->fuse_ok = 0;
    self->era++; /* every cached answer is forgotten */
    Py_RETURN_NONE;
}

static PyObject *emu_flush(EmuExits *self, PyObject *unused)
{
    if (before_python(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *emu_forget(EmuExits *self, PyObject *unused)
{
    self->seen_valid = 0;
    Py_RETURN_NONE;
}

static PyObject *emu_remember(EmuExits *self, PyObject *unused)
{
    refresh_seen(self);
    Py_RETURN_NONE;
}

/* An MSR of the engine's own, past the SVM intercept (backends/emu/cpu_msrs.py): the
 * permission-map byte at ``at`` loses the bits of ``mask`` for the access and gets them
 * back after.  -1 with an exception if unicorn refuses. */
static int engine_msr(EmuExits *self, uint32_t msr, uint64_t at, unsigned mask, int write,
                      uint64_t *value)
{
    unsigned char old, open;
    if (self->mem_read(self->uc, at, &old, 1) != 0)
        goto refused;
    open = old & (unsigned char)~mask;
    if (self->mem_write(self->uc, at, &open, 1) != 0)
        goto refused;
    UcMsr access = {msr, write ? *value : 0};
    int status = write ? self->reg_write(self->uc, self->msr_id, &access)
                       : self->reg_read(self->uc, self->msr_id, &access);
    int restored = self->mem_write(self->uc, at, &old, 1);
    if (status != 0 || restored != 0)
        goto refused;
    *value = access.value;
    return 0;
refused:
    PyErr_Format(PyExc_RuntimeError, "unicorn refused MSR %s %#x", write ? "write" : "read", msr);
    return -1;
}

static PyObject *emu_msr_read(EmuExits *self, PyObject *args)
{
    unsigned int msr, mask;
    unsigned long long at;
    uint64_t value = 0;
    if (!PyArg_ParseTuple(args, "IKI", &msr, &at, &mask) ||
        engine_msr(self, msr, at, mask, 0, &value) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *emu_msr_write(EmuExits *self, PyObject *args)
{
    unsigned int msr, mask;
    unsigned long long at, value;
    if (!PyArg_ParseTuple(args, "IKKI", &msr, &value, &at, &mask))
        return NULL;
    uint64_t v = value;
    if (engine_msr(self, msr, at, mask, 1, &v) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *emu_callbacks(EmuExits *self, PyObject *unused)
{
    return Py_BuildValue("{sKsKsKsKsKsK}", "cpuid", (unsigned long long)(uintptr_t)on_cpuid,
                         "rdtsc", (unsigned long long)(uintptr_t)on_rdtsc, "rdtscp",
                         (unsigned long long)(uintptr_t)on_rdtscp, "in",
                         (unsigned long long)(uintptr_t)on_in, "out",
                         (unsigned long long)(uintptr_t)on_out, "block",
                         (unsigned long long)(uintptr_t)on_block);
}

static PyObject *emu_get_counts(EmuExits *self, void *closure)
{
    PyObject *counts = PyDict_New();
    for (int i = 0; counts != NULL && i < N_KINDS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(self->counts[i]);
        if (v == NULL || PyDict_SetItemString(counts, COUNT_NAMES[i], v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(counts);
            break;
        }
        Py_DECREF(v);
    }
    return counts;
}

static PyObject *emu_get_decide(EmuExits *self, void *closure)
{
    return Py_NewRef(self->decide ? self->decide : Py_None);
}

static int emu_set_decide(EmuExits *self, PyObject *value, void *closure)
{
    Py_XSETREF(self->decide, value == NULL || value == Py_None ? NULL : Py_NewRef(value));
    return 0;
}

static PyObject *emu_get_tsc_aux(EmuExits *self, void *closure)
{
    if (!self->tsc_aux_known)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(self->tsc_aux);
}

static int emu_set_tsc_aux(EmuExits *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        self->tsc_aux_known = 0;
        return 0;
    }
    uint64_t v;
    if (as_u64(value, &v) < 0)
        return -1;
    self->tsc_aux = v;
    self->tsc_aux_known = 1;
    return 0;
}

static PyObject *emu_get_draining(EmuExits *self, void *closure)
{
    return PyBool_FromLong(self->draining);
}

static int emu_set_draining(EmuExits *self, PyObject *value, void *closure)
{
    int truth = value == NULL ? 0 : PyObject_IsTrue(value);
    if (truth < 0)
        return -1;
    self->draining = truth;
    return 0;
}

static PyMethodDef emu_methods[] = {
    {"start", (PyCFunction)emu_start_method, METH_O,
     "start(rip) -> status: uc_emu_start from rip, the GIL released while the guest runs"},
    {"set_policy", (PyCFunction)emu_set_policy, METH_O, "set_policy(policy): the exit controls"},
    {"set_timing", (PyCFunction)emu_set_timing, METH_VARARGS,
     "set_timing(timed, idle_ns): whether RDTSC answers virtual time, and the time idle"},
    {"fuse", (PyCFunction)emu_fuse, METH_VARARGS,
     "fuse(resume, answer, absorb, trace): the fused CPUID path (answer None: off)"},
    {"flush", (PyCFunction)emu_flush, METH_NOARGS,
     "Python runs on the vCPU: hand the fused exits to the processor, forget its answers"},
    {"forget", (PyCFunction)emu_forget, METH_NOARGS, "the next exit captures through Python"},
    {"remember", (PyCFunction)emu_remember, METH_NOARGS,
     "the capture just reported the state as it is now (and capture.rflags)"},
    {"callbacks", (PyCFunction)emu_callbacks, METH_NOARGS, "hook name -> C function address"},
    {"msr_read", (PyCFunction)emu_msr_read, METH_VARARGS,
     "msr_read(msr, byte, bits) -> value: the engine's MSR, its permission-map bits opened"},
    {"msr_write", (PyCFunction)emu_msr_write, METH_VARARGS,
     "msr_write(msr, value, byte, bits): the same for a write"},
    {NULL},
};

static PyGetSetDef emu_getset[] = {
    {"counts", (getter)emu_get_counts, NULL, "exits by the path that took them", NULL},
    {"decide", (getter)emu_get_decide, (setter)emu_set_decide, "the processor's exit", NULL},
    {"tsc_aux", (getter)emu_get_tsc_aux, (setter)emu_set_tsc_aux, "IA32_TSC_AUX or None", NULL},
    {"draining", (getter)emu_get_draining, (setter)emu_set_draining, "a drain is on", NULL},
    {NULL},
};

static PyTypeObject EmuExitsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyflank.native._accel.EmuExits",
    .tp_doc = "The native exits of one software-CPU engine (backends/emu/native_exits.py).",
    .tp_basicsize = sizeof(EmuExits),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)emu_init,
    .tp_dealloc = (destructor)emu_dealloc,
    .tp_methods = emu_methods,
    .tp_getset = emu_getset,
};

int emu_add_types(PyObject *module)
{
    if (PyType_Ready(&EmuExitsType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "EmuExits", (PyObject *)&EmuExitsType);
}
