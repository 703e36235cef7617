/* SPDX-License-Identifier: GPL-2.0-or-later */
/* pyflank.native._accel: the native exit paths of the software CPU (emu.c) and of KVM
 * (kvm.c).  Built by ``pip install`` where a C compiler and the Python headers exist. */
#include "accel.h"

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pyflank.native._accel",
    .m_doc = "pyflank's native exit paths (see pyflank.native).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__accel(void)
{
    PyObject *module = PyModule_Create(&accel_module);
    if (module == NULL)
        return NULL;
    if (emu_add_types(module) < 0 || kvm_add_types(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
