/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The KVM vCPU's run loop in C: KVM_RUN with the GIL released, the KVM_EXIT_IO exit
 * decoded from the kvm_run page, and the entry of a plan that only sets registers.
 * backends/kvm/vcpu.py (``_loop``, ``_enter``) and io_exits.py (``IoExits.exit``) are the
 * reference; this is the same logic, and it calls them for everything else: the other
 * exit reasons (``translate``), a site the I/O cache does not know, guest state that
 * moved, devices beyond a one-byte OUT, a plan that needs more than registers, a failed
 * KVM_RUN, a stop request.  Used only with KVM_CAP_SYNC_REGS (the registers are in the
 * kvm_run page); without it the Python loop runs.
 */
#include "accel.h"

#ifdef __linux__
#include <errno.h>
#include <sys/ioctl.h>

enum { GPRS = 18, KVM_GPRS = 16, RIP = 16 };

typedef struct {
    PyObject_HEAD
    int fd;
    unsigned long run_request;
    unsigned char *run; /* the kvm_run page */
    uint64_t *regs;     /* its sync regs: kvm_regs (RAX RBX RCX RDX RSI RDI RSP RBP R8-R15 RIP RFLAGS) */
    unsigned char *sregs;
    Py_ssize_t sregs_size;
    uint64_t *cr3;
    size_t exit_reason_at, io_word_at, data_offset_at, dirty_at;
    uint32_t exit_io;
    uint64_t sync_regs;
    long nothing, completion, unless_moved; /* owed kinds (backends/kvm/owed.py) */
    uint64_t doorbell, doorbell_valid, one_byte_out_mask, one_byte_out;
    Py_ssize_t sdm_order[GPRS], doorbell_order[GPRS], kvm_order[KVM_GPRS];
    PyObject *vcpu, *io, *owed, *kicker, *registers, *records, *lookup, *io_write, *translate;
    PyObject *stop_type, *empty, *minus_one;
    uint64_t exits; /* KVM_RUN returns with an exit, not yet added to ``vcpu.kvm_exits`` */
    uint64_t native_exits, python_exits, device_outs;
} KvmLoop;

static inline uint64_t load64(const unsigned char *at)
{
    uint64_t v;
    memcpy(&v, at, 8);
    return v;
}

static int set_long(PyObject *obj, const char *name, long value)
{
    PyObject *v = PyLong_FromLong(value);
    if (v == NULL)
        return -1;
    int status = PyObject_SetAttrString(obj, name, v);
    Py_DECREF(v);
    return status;
}

/* -- KVM_EXIT_IO (IoExits.exit) ------------------------------------------------------ */

/* The I/O site at RIP: the cache (``IoSites.lookup``), else ``IoExits._site``. */
static PyObject *io_site(KvmLoop *self, uint64_t access, uint64_t count)
{
    PyObject *key = Py_BuildValue("(KKK)", (unsigned long long)self->regs[RIP],
                                  (unsigned long long)*self->cr3, (unsigned long long)access);
    if (key == NULL)
        return NULL;
    PyObject *site = PyObject_CallOneArg(self->lookup, key);
    Py_DECREF(key);
    if (site != Py_None)
        return site;
    Py_DECREF(site);
    return PyObject_CallMethod(self->io, "_site", "KK", (unsigned long long)access,
                               (unsigned long long)count);
}

/* Whether a port access exits, as the exit controls say (IoExits' ``_all_exit``,
 * ``_bitmaps``): 1, 0, or -1 with an exception. */
static int io_exits(KvmLoop *self, uint64_t port, uint64_t size)
{
    int all = attr_true(self->io, "_all_exit");
    if (all != 0)
        return all;
    PyObject *bitmaps = PyObject_GetAttrString(self->io, "_bitmaps");
    if (bitmaps == NULL)
        return -1;
    int none = bitmaps == Py_None;
    Py_DECREF(bitmaps);
    if (none)
        return 0;
    PyObject *says = PyObject_CallMethod(self->io, "_bitmap_says_exit", "KK",
                                         (unsigned long long)port, (unsigned long long)size);
    if (says == NULL)
        return -1;
    int taken = PyObject_IsTrue(says);
    Py_DECREF(says);
    return taken;
}

/* The general registers in the processor's order, then RIP and RFLAGS. */
static PyObject *ordered_regs(KvmLoop *self, const Py_ssize_t *order)
{
    PyObject *values = PyTuple_New(GPRS);
    if (values == NULL)
        return NULL;
    for (int i = 0; i < GPRS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(self->regs[order[i]]);
        if (v == NULL) {
            Py_DECREF(values);
            return NULL;
        }
        PyTuple_SET_ITEM(values, i, v);
    }
    return values;
}

/* One KVM_EXIT_IO: a new reference to the exit record, or Py_None (a device took the
 * access), or NULL with an exception. */
static PyObject *io_exit(KvmLoop *self)
{
    uint64_t io = load64(self->run + self->io_word_at);
    uint64_t access = io & 0xFFFFFFFFu, port = io >> 16 & 0xFFFF, size = io >> 8 & 0xFF;
    PyObject *site = NULL, *info = NULL, *values = NULL, *guest = NULL, *record = NULL;
    const Py_ssize_t *order;
    int doorbell = self->doorbell_valid && (io & ~(uint64_t)0xFF00) == self->doorbell;
    if (doorbell) {
        site = io_site(self, access, 1);
        if (site == NULL)
            return NULL;
        int pending = attr_true(site, "pending");
        PyObject *start = PyObject_GetAttrString(site, "start");
        int ok = pending >= 0 && start != NULL &&
                 set_long(self->owed, "kind", pending ? self->unless_moved : self->nothing) == 0 &&
                 PyObject_SetAttrString(self->owed, "at", start) == 0;
        Py_XDECREF(start);
        if (!ok)
            goto done;
        info = PyObject_GetAttrString(site, "vmcall");
        order = self->doorbell_order;
    } else {
        int taken = io_exits(self, port, size);
        if (taken < 0)
            return NULL;
        if (!taken) {
            self->device_outs++;
            PyObject *result;
            if ((io & self->one_byte_out_mask) == self->one_byte_out) { /* the commonest */
                uint64_t offset = load64(self->run + self->data_offset_at);
                result = PyObject_CallFunction(self->io_write, "Kii", (unsigned long long)port, 1,
                                               (int)self->run[offset]);
            } else {
                result = PyObject_CallMethod(self->io, "_device", "KKKO", (unsigned long long)port,
                                             (unsigned long long)size,
                                             (unsigned long long)(io >> 32),
                                             (io & 0xFF) == 1 ? Py_True : Py_False);
            }
            if (result == NULL)
                return NULL;
            Py_DECREF(result);
            return Py_NewRef(Py_None);
        }
        site = io_site(self, access, io >> 32);
        if (site == NULL)
            return NULL;
        int pending = attr_true(site, "pending");
        if (pending < 0 ||
            set_long(self->owed, "kind", pending ? self->completion : self->nothing) < 0)
            goto done;
        info = PyObject_GetAttrString(site, "io");
        order = self->sdm_order;
    }
    if (info == NULL)
        goto done;
    values = ordered_regs(self, order);
    if (values == NULL)
        goto done;
    PyObject *seen = PyObject_GetAttrString(self->registers, "sregs_seen");
    if (seen == NULL)
        goto done;
    int same = PyBytes_Check(seen) && PyBytes_GET_SIZE(seen) == self->sregs_size &&
               memcmp(PyBytes_AS_STRING(seen), self->sregs, (size_t)self->sregs_size) == 0;
    Py_DECREF(seen);
    if (same) {
        guest = Py_NewRef(Py_None);
    } else {
        PyObject *image = PyBytes_FromStringAndSize((const char *)self->sregs, self->sregs_size);
        if (image == NULL)
            goto done;
        guest = PyObject_CallMethod(self->records, "moved", "O", image);
        Py_DECREF(image);
        if (guest == NULL)
            goto done;
    }
    PyObject *start = PyObject_GetAttrString(site, "start");
    if (start == NULL)
        goto done;
    record = PyTuple_Pack(7, info, values, start, PyTuple_GET_ITEM(values, GPRS - 1), guest,
                          self->empty, self->minus_one);
    Py_DECREF(start);
    self->native_exits++;
done:
    Py_XDECREF(site);
    Py_XDECREF(info);
    Py_XDECREF(values);
    Py_XDECREF(guest);
    return record;
}

/* -- VM entry (KvmVcpu._enter) ------------------------------------------------------- */

/* Load ``plan``: registers in place when that is all (and KVM owes the instruction
 * nothing that would change them), else ``_enter``.  A new reference to the exit record
 * a refused entry makes, Py_None, or NULL with an exception. */
static PyObject *enter(KvmLoop *self, PyObject *plan)
{
    int simple = attr_true(plan, "simple");
    if (simple < 0)
        return NULL;
    PyObject *kind_obj = PyObject_GetAttrString(self->owed, "kind");
    if (kind_obj == NULL)
        return NULL;
    long kind = PyLong_AsLong(kind_obj);
    Py_DECREF(kind_obj);
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    uint64_t rip;
    if (!simple || (kind != self->nothing && kind != self->unless_moved) ||
        attr_u64(plan, "rip", &rip) < 0)
        goto careful;
    if (kind == self->unless_moved) {
        uint64_t at;
        if (attr_u64(self->owed, "at", &at) < 0)
            return NULL;
        if (rip == at)
            goto careful; /* KVM would skip the instruction again: complete it first */
    }
    PyObject *regs = PyObject_GetAttrString(plan, "regs");
    if (regs == NULL)
        return NULL;
    PyObject *seq = PySequence_Fast(regs, "plan registers");
    Py_DECREF(regs);
    if (seq == NULL)
        return NULL;
    uint64_t values[KVM_GPRS];
    int ok = PySequence_Fast_GET_SIZE(seq) == KVM_GPRS;
    for (int i = 0; i < KVM_GPRS && ok; i++)
        ok = as_u64(PySequence_Fast_GET_ITEM(seq, self->kvm_order[i]), &values[i]) == 0;
    Py_DECREF(seq);
    if (!ok) {
        PyErr_Clear();
        goto careful; /* the reference reports what is wrong with the plan */
    }
    if (set_long(self->owed, "kind", self->nothing) < 0)
        return NULL;
    memcpy(self->regs, values, sizeof values);
    self->regs[RIP] = rip;
    uint64_t dirty = self->sync_regs;
    memcpy(self->run + self->dirty_at, &dirty, sizeof dirty);
    return Py_NewRef(Py_None);
careful:
    if (PyErr_Occurred())
        return NULL;
    return PyObject_CallMethod(self->vcpu, "_enter", "O", plan);
}

/* -- the loop (KvmVcpu._loop) -------------------------------------------------------- */

static int add_exits(KvmLoop *self)
{
    if (self->exits == 0)
        return 0;
    PyObject *count = PyObject_GetAttrString(self->vcpu, "kvm_exits");
    if (count == NULL)
        return -1;
    PyObject *more = PyLong_FromUnsignedLongLong(self->exits);
    PyObject *total = more == NULL ? NULL : PyNumber_Add(count, more);
    Py_DECREF(count);
    Py_XDECREF(more);
    if (total == NULL)
        return -1;
    int status = PyObject_SetAttrString(self->vcpu, "kvm_exits", total);
    Py_DECREF(total);
    self->exits = 0;
    return status;
}

static PyObject *loop_run(KvmLoop *self, PyObject *args)
{
    PyObject *decide, *record;
    if (!PyArg_ParseTuple(args, "OO", &decide, &record))
        return NULL;
    Py_INCREF(record);
    PyObject *result = NULL;
    for (;;) {
        while (record != Py_None) {
            PyObject *plan = PyObject_CallOneArg(decide, record);
            Py_DECREF(record);
            record = NULL;
            if (plan == NULL)
                goto done;
            if (Py_TYPE(plan) == (PyTypeObject *)self->stop_type) {
                result = plan;
                goto done;
            }
            record = enter(self, plan);
            Py_DECREF(plan);
            if (record == NULL)
                goto done;
        }
        Py_DECREF(record);
        record = NULL;
        int kicked = attr_true(self->kicker, "kicked");
        if (kicked < 0)
            goto done;
        if (kicked) {
            result = PyObject_CallMethod(self->vcpu, "_interrupted", NULL);
            goto done;
        }
        int status, error;
        Py_BEGIN_ALLOW_THREADS
        status = ioctl(self->fd, self->run_request, 0);
        error = errno;
        Py_END_ALLOW_THREADS
        if (status < 0) {
            PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", error, strerror(error));
            if (exc == NULL)
                goto done;
            record = PyObject_CallMethod(self->vcpu, "_not_entered", "O", exc);
            Py_DECREF(exc);
            if (record == NULL)
                goto done;
            continue;
        }
        self->exits++;
        uint32_t reason;
        memcpy(&reason, self->run + self->exit_reason_at, sizeof reason);
        PyObject *outcome;
        if (reason == self->exit_io) {
            outcome = io_exit(self);
        } else {
            self->python_exits++;
            outcome = PyObject_CallFunction(self->translate, "I", reason);
        }
        if (outcome == NULL)
            goto done;
        if (Py_TYPE(outcome) == (PyTypeObject *)self->stop_type) {
            result = outcome;
            goto done;
        }
        record = outcome;
    }
done:
    Py_XDECREF(record);
    if (add_exits(self) < 0)
        Py_CLEAR(result);
    return result;
}

/* -- the Python face ----------------------------------------------------------------- */

static int parse_order(PyObject *tuple, Py_ssize_t *out, Py_ssize_t count, Py_ssize_t limit)
{
    PyObject *seq = PySequence_Fast(tuple, "an order");
    if (seq == NULL)
        return -1;
    int ok = PySequence_Fast_GET_SIZE(seq) == count;
    for (Py_ssize_t i = 0; i < count && ok; i++) {
        out[i] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i));
        ok = out[i] >= 0 && out[i] < limit;
    }
    Py_DECREF(seq);
    if (!ok && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "a register order out of range");
    return ok ? 0 : -1;
}

static void loop_clear(KvmLoop *self)
{
    Py_CLEAR(self->vcpu);
    Py_CLEAR(self->io);
    Py_CLEAR(self->owed);
    Py_CLEAR(self->kicker);
    Py_CLEAR(self->registers);
    Py_CLEAR(self->records);
    Py_CLEAR(self->lookup);
    Py_CLEAR(self->io_write);
    Py_CLEAR(self->translate);
    Py_CLEAR(self->stop_type);
    Py_CLEAR(self->empty);
    Py_CLEAR(self->minus_one);
}

static void loop_dealloc(KvmLoop *self)
{
    loop_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int loop_init(KvmLoop *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"vcpu", "stop", "page", "words", "orders", NULL};
    PyObject *vcpu, *stop, *page, *words, *orders;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO", names, &vcpu, &stop, &page, &words,
                                     &orders))
        return -1;
    /* page: (fd, KVM_RUN, kvm_run, kvm_regs, kvm_sregs, its size, CR3's address,
     *        exit_reason, I/O word, data_offset, kvm_dirty_regs: offsets in kvm_run)
     * words: (KVM_EXIT_IO, KVM_SYNC_X86_REGS, NOTHING, COMPLETION, UNLESS_MOVED,
     *         the doorbell's word or -1, the one-byte OUT's mask and word)
     * orders: (SDM order, doorbell order, KVM order) */
    unsigned long long request, run, regs, sregs, cr3, reason_at, io_at, data_at, dirty_at;
    Py_ssize_t sregs_size;
    int fd;
    long long doorbell;
    unsigned long long sync, mask, one_byte;
    unsigned int exit_io;
    long nothing, completion, unless_moved;
    PyObject *sdm, *bell, *kvm;
    if (!PyArg_ParseTuple(page, "iKKKKnKKKKK", &fd, &request, &run, &regs, &sregs, &sregs_size,
                          &cr3, &reason_at, &io_at, &data_at, &dirty_at) ||
        !PyArg_ParseTuple(words, "IKlllLKK", &exit_io, &sync, &nothing, &completion,
                          &unless_moved, &doorbell, &mask, &one_byte) ||
        !PyArg_ParseTuple(orders, "OOO", &sdm, &bell, &kvm) ||
        parse_order(sdm, self->sdm_order, GPRS, GPRS) < 0 ||
        parse_order(bell, self->doorbell_order, GPRS, GPRS) < 0 ||
        parse_order(kvm, self->kvm_order, KVM_GPRS, KVM_GPRS) < 0)
        return -1;
    loop_clear(self);
    self->fd = fd;
    self->run_request = (unsigned long)request;
    self->run = (unsigned char *)(uintptr_t)run;
    self->regs = (uint64_t *)(uintptr_t)regs;
    self->sregs = (unsigned char *)(uintptr_t)sregs;
    self->sregs_size = sregs_size;
    self->cr3 = (uint64_t *)(uintptr_t)cr3;
    self->exit_reason_at = reason_at;
    self->io_word_at = io_at;
    self->data_offset_at = data_at;
    self->dirty_at = dirty_at;
    self->exit_io = exit_io;
    self->sync_regs = sync;
    self->nothing = nothing;
    self->completion = completion;
    self->unless_moved = unless_moved;
    self->doorbell_valid = doorbell >= 0;
    self->doorbell = (uint64_t)doorbell;
    self->one_byte_out_mask = mask;
    self->one_byte_out = one_byte;
    self->vcpu = Py_NewRef(vcpu);
    self->stop_type = Py_NewRef(stop);
    struct {
        PyObject **slot;
        PyObject *owner;
        const char *name;
    } wanted[] = {
        {&self->io, vcpu, "io"},           {&self->owed, vcpu, "owed"},
        {&self->kicker, vcpu, "kicker"},   {&self->registers, vcpu, "registers"},
        {&self->records, vcpu, "records"},
    };
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
        *wanted[i].slot = PyObject_GetAttrString(wanted[i].owner, wanted[i].name);
        if (*wanted[i].slot == NULL)
            return -1;
    }
    PyObject *sites = PyObject_GetAttrString(self->io, "sites");
    if (sites == NULL)
        return -1;
    self->lookup = PyObject_GetAttrString(sites, "lookup");
    Py_DECREF(sites);
    PyObject *ports = PyObject_GetAttrString(self->io, "ports");
    if (self->lookup == NULL || ports == NULL) {
        Py_XDECREF(ports);
        return -1;
    }
    self->io_write = PyObject_GetAttrString(ports, "io_write");
    Py_DECREF(ports);
    PyObject *exits = PyObject_GetAttrString(vcpu, "exits");
    if (exits == NULL)
        return -1;
    self->translate = PyObject_GetAttrString(exits, "translate");
    Py_DECREF(exits);
    if (self->translate == NULL)
        return -1;
    self->empty = PyUnicode_FromString("");
    self->minus_one = PyLong_FromLong(-1);
    if (self->io_write == NULL || self->empty == NULL || self->minus_one == NULL)
        return -1;
    return 0;
}

static PyObject *loop_get_counts(KvmLoop *self, void *closure)
{
    return Py_BuildValue("{sKsKsK}", "native", (unsigned long long)self->native_exits, "python",
                         (unsigned long long)self->python_exits, "device",
                         (unsigned long long)self->device_outs);
}

static PyMethodDef loop_methods[] = {
    {"run", (PyCFunction)loop_run, METH_VARARGS,
     "run(decide, record) -> Stop: decide ``record`` (None: none), then run to a stop"},
    {NULL},
};

static PyGetSetDef loop_getset[] = {
    {"counts", (getter)loop_get_counts, NULL, "exits by the path that took them", NULL},
    {NULL},
};

static PyTypeObject KvmLoopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyflank.native._accel.KvmLoop",
    .tp_doc = "The native run loop of one KVM vCPU (backends/kvm/native_loop.py).",
    .tp_basicsize = sizeof(KvmLoop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)loop_init,
    .tp_dealloc = (destructor)loop_dealloc,
    .tp_methods = loop_methods,
    .tp_getset = loop_getset,
};

int kvm_add_types(PyObject *module)
{
    if (PyType_Ready(&KvmLoopType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "KvmLoop", (PyObject *)&KvmLoopType);
}
#else
int kvm_add_types(PyObject *module)
{
    return 0; /* KVM is Linux's */
}
#endif
