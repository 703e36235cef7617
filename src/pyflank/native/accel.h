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

/* The GIL around a call into Python from code that runs without it.  A thread that let
 * go of the GIL through ``release`` gets its own thread state back; any other (a hook
 * reached from a ctypes call) goes through PyGILState. */
typedef struct {
    PyThreadState *saved; /* the running thread's state while it holds no GIL */
} GilHolder;

typedef struct {
    int restored;
    PyGILState_STATE state;
} GilTicket;

static inline void gil_take(GilHolder *holder, GilTicket *ticket)
{
    if (holder->saved != NULL) {
        PyEval_RestoreThread(holder->saved);
        holder->saved = NULL;
        ticket->restored = 1;
    } else {
        ticket->state = PyGILState_Ensure();
        ticket->restored = 0;
    }
}

static inline void gil_give(GilHolder *holder, GilTicket *ticket)
{
    if (ticket->restored)
        holder->saved = PyEval_SaveThread();
    else
        PyGILState_Release(ticket->state);
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
