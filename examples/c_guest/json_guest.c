/* A freestanding C guest that talks JSON to its VMM over vmcalls (examples/json_commands.py
 * answers).  Built by c_json_guest.py with: gcc $(python -m pyflank.guests cflags) ... */
#define PYFLANK_DEFINE_RUNTIME
#include "pyflank.h"

static const char *const requests[] = {
    "{\"cmd\": \"add\", \"args\": [1, 2, 39]}",
    "{\"cmd\": \"max\", \"args\": [3, 17, 5]}",
    "{\"cmd\": \"launch\"}",
};

static char reply[512];

static size_t length(const char *text)
{
    size_t n = 0;
    while (text[n])
        n++;
    return n;
}

static void put_number(uint64_t value)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        pyflank_putc(digits[--n]);
}

/* The integer after "result": in a reply, or -1. */
static int64_t result_of(const char *json, size_t size)
{
    static const char key[] = "\"result\":";
    for (size_t i = 0; i + sizeof key - 1 < size; i++) {
        if (memcmp(json + i, key, sizeof key - 1) != 0)
            continue;
        int64_t value = 0;
        for (i += sizeof key - 1; i < size && json[i] >= '0' && json[i] <= '9'; i++)
            value = value * 10 + (json[i] - '0');
        return value;
    }
    return -1;
}

static void guest_main(uint64_t vcpuid)
{
    struct pyflank_vmm vmm = pyflank_init();
    struct pyflank_vmcall_registers regs;

    pyflank_puts("c guest on vCPU ");
    put_number(vcpuid);
    pyflank_puts(vmm.features & PYFLANK_FEATURE_VMCALL_INSTRUCTION ? ": VMCALL\n"
                                                                   : ": I/O-port doorbell\n");
    if (pyflank_vmcall_versions(&vmm, &regs, PYFLANK_VERSION_PROTOCOL) != PYFLANK_SUCCESS ||
        PYFLANK_VERSIONS_MAJOR(&regs) != PYFLANK_PROTOCOL_VERSION) {
        pyflank_puts("unexpected protocol version\n");
        return;
    }
    for (size_t i = 0; i < sizeof requests / sizeof requests[0]; i++) {
        const char *request = requests[i];
        uint64_t status = pyflank_vmcall_data(&vmm, &regs, PYFLANK_DATA_JSON,
                                              (uintptr_t)request, length(request),
                                              (uintptr_t)reply, sizeof reply);
        pyflank_puts("> ");
        pyflank_puts(request);
        if (status != PYFLANK_SUCCESS || PYFLANK_DATA_REPLY_TYPE(&regs) != PYFLANK_DATA_JSON) {
            pyflank_puts("\n< BF_VMCALL_FAILURE\n");
            continue;
        }
        size_t size = PYFLANK_DATA_REPLY_SIZE(&regs);
        pyflank_puts("\n< ");
        pyflank_write(reply, size);
        int64_t result = result_of(reply, size);
        if (result >= 0) {
            pyflank_puts("  (result ");
            put_number((uint64_t)result);
            pyflank_puts(")");
        }
        pyflank_putc('\n');
    }
}

PYFLANK_ENTRY(guest_main)
