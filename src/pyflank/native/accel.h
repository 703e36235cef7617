/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The native accelerator's shared declarations: the types each part adds to the module,
 * and the small helpers both engines use to hold the GIL only while Python runs. */
#ifndef PYFLANK_ACCEL_H
#define PYFLANK_ACCEL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

int emu_add_types(PyObject *module);
int kvm_add_types(PyObject *module);

/* The GIL of a thread that runs guest code between calls into Python.
 *
 * Taking and dropping the GIL at every call costs little alone, but with several threads
 * each drop wakes a waiter (a futex call) that mostly finds the GIL taken again: vCPUs
 * whose exits all run Python then go slower together than one alone.  So the thread
 * keeps the GIL after a call (``held``) and lets it go only once it has run ``patience``
 * blocks of guest code without needing Python (``idle``, counted by the block hook), or
 * when Python asks for it (another thread's switch request reaches the eval loop in the
 * next call).  A vCPU whose guest computes gives the GIL away within microseconds; one
 * whose exits all run Python holds it for the interpreter's switch interval, as Python
 * threads do. */
typedef struct {
    PyThreadState *saved; /* the running thread's state while it holds no GIL */
    int held;             /* it holds the GIL and may let it go */
    uint32_t idle, patience;
} GilHolder;

typedef struct {
    int how; /* 0: was held; 1: restored; 2: through PyGILState */
    PyGILState_STATE state;
} GilTicket;

static inline void gil_take(GilHolder *holder, GilTicket *ticket)
{
    if (holder->held) {
        ticket->how = 0;
    } else if (holder->saved != NULL) {
        PyEval_RestoreThread(holder->saved);
        holder->saved = NULL;
        ticket->how = 1;
    } else { /* a hook reached from a call that released the GIL itself (ctypes) */
        ticket->state = PyGILState_Ensure();
        ticket->how = 2;
    }
}

static inline void gil_give(GilHolder *holder, GilTicket *ticket)
{
    if (ticket->how == 2) {
        PyGILState_Release(ticket->state);
        return;
    }
    holder->held = 1;
    holder->idle = 0;
}

/* From code running without Python: let the GIL go if it was kept long enough. */
static inline void gil_idle(GilHolder *holder)
{
    if (holder->held && ++holder->idle >= holder->patience) {
        holder->held = 0;
        holder->saved = PyEval_SaveThread();
    }
}

/* Entering code that may run without Python (the GIL is held): keep it for now. */
static inline void gil_keep(GilHolder *holder)
{
    holder->saved = NULL;
    holder->held = 1;
    holder->idle = 0;
}

/* Back from such code: hold the GIL again. */
static inline void gil_return(GilHolder *holder)
{
    if (!holder->held)
        PyEval_RestoreThread(holder->saved);
    holder->saved = NULL;
    holder->held = 0;
}

/* A Python int as an unsigned 64-bit value; -1 with an exception if it does not fit. */
static inline int as_u64(PyObject *value, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* An attribute as an unsigned 64-bit value (-1 with an exception). */
static inline int attr_u64(PyObject *obj, const char *name, uint64_t *out)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    if (value == NULL)
        return -1;
    int status = as_u64(value, out);
    Py_DECREF(value);
    return status;
}

/* An attribute's truth (-1 with an exception). */
static inline int attr_true(PyObject *obj, const char *name)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

#endif
